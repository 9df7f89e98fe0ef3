// Navigation inside the app without a page load. Pages call go(); the shell (app.js) routes
// when told, so pages need not import the shell that imports them.
export const NAVIGATED = 'fanqueue:navigated';

/** Goes to an /app path without reloading. */
export function go(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  window.dispatchEvent(new Event(NAVIGATED));
}
