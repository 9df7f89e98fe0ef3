// The app's shell: sign-in, the router of /app/... paths, the navigation.
import { token, signIn, signOut, whenUnauthorized } from './api.js';
import { html, render } from './ui.js';
import { go, NAVIGATED } from './nav.js';
import * as conversations from './pages/conversations.js';
import * as fans from './pages/fans.js';
import * as imports from './pages/imports.js';
import * as campaigns from './pages/campaigns.js';
import * as segments from './pages/segments.js';
import * as automations from './pages/automations.js';
import * as analytics from './pages/analytics.js';
import * as operator from './pages/operator.js';

// Each page: a path pattern, its module's show(main, params) (which may return a function that
// stops its refreshes), the document title.
const routes = [
  [/^\/app\/messages\/onlyfans(?:\/(\d+))?\/?$/, conversations.show, 'Conversations', (m) => ({ id: m[1] })],
  [/^\/app\/fans\/?$/, fans.showList, 'Fans'],
  [/^\/app\/fans\/(\d+)\/?$/, fans.showFan, 'Fan', (m) => ({ id: m[1] })],
  [/^\/app\/imports\/?$/, imports.show, 'Imports'],
  [/^\/app\/segments\/?$/, segments.show, 'Segments'],
  [/^\/app\/campaigns\/?$/, campaigns.showList, 'Campaigns'],
  [/^\/app\/campaigns\/(\d+)\/?$/, campaigns.showCampaign, 'Campaign', (m) => ({ id: m[1] })],
  [/^\/app\/automations\/?$/, automations.showList, 'Automations'],
  [/^\/app\/automations\/new\/?$/, automations.showNew, 'New automation'],
  [/^\/app\/automations\/(\d+)\/?$/, automations.showAutomation, 'Automation', (m) => ({ id: m[1] })],
  [/^\/app\/automations\/(\d+)\/edit\/?$/, automations.showEdit, 'Edit automation', (m) => ({ id: m[1] })],
  [/^\/app\/platforms\/onlyfans\/analytics\/?$/, analytics.show, 'Analytics'],
  [/^\/app\/operator\/?$/, operator.show, 'Operator'],
];

const main = document.getElementById('main');
const nav = document.getElementById('nav');
let stop = null;
let visits = 0;

function route() {
  visits++;
  if (stop) {
    stop();
    stop = null;
  }
  if (!token()) {
    showSignIn();
    return;
  }
  nav.hidden = false;
  const path = location.pathname;
  if (path === '/app/' || path === '/app') {
    go('/app/messages/onlyfans', { replace: true });
    return;
  }
  const section = path.split('/')[2];
  for (const a of nav.querySelectorAll('a')) {
    if (a.dataset.section === section) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  for (const [re, show, title, params] of routes) {
    const m = path.match(re);
    if (m) {
      document.title = `${title} · fanqueue`;
      const visit = ++visits;
      // Each visit gets an element of its own: whatever a page still renders after the reader
      // left it lands in its detached element, not in the next page.
      const root = document.createElement('div');
      main.replaceChildren(root);
      const result = show(root, params ? params(m) : {});
      // A page that finished loading after the reader left it stops its refreshes at once.
      Promise.resolve(result).then((s) => {
        if (typeof s !== 'function') return;
        if (visit === visits) stop = s;
        else s();
      });
      return;
    }
  }
  document.title = 'Not found · fanqueue';
  render(main, html`<h1>Not found</h1><p>No page at ${path}. <a href="/app/messages/onlyfans">Conversations</a></p>`);
}

function showSignIn(reason) {
  nav.hidden = true;
  document.title = 'Sign in · fanqueue';
  render(
    main,
    html`<h1>Sign in</h1>
      ${reason ? html`<p class="error" role="alert">${reason}</p>` : ''}
      <p>Open the link that <code>fanqueue token --user-id N --url</code> prints, or paste a token
        (<code>fanqueue token --user-id N</code>).</p>
      <form id="sign-in" class="stack card">
        <label>Token <textarea name="token" id="token-input" required autocomplete="off" spellcheck="false"></textarea></label>
        <div><button type="submit">Sign in</button></div>
      </form>`,
  );
  main.querySelector('#sign-in').addEventListener('submit', (e) => {
    e.preventDefault();
    const t = new FormData(e.target).get('token').trim();
    if (!t) return;
    signIn(t);
    route();
  });
}

// A link with the token in its fragment signs in, then the fragment is dropped from the
// address bar and history.
function takeTokenFromFragment() {
  const m = location.hash.match(/^#token=([^&]+)/);
  if (m) {
    signIn(decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname + location.search);
  }
}

document.addEventListener('click', (e) => {
  const a = e.target.closest('a');
  if (!a || e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || a.target || a.download) return;
  const url = new URL(a.href, location.href);
  if (url.origin === location.origin && url.pathname.startsWith('/app/')) {
    e.preventDefault();
    go(url.pathname + url.search);
    main.focus({ preventScroll: true });
  }
});

document.getElementById('sign-out').addEventListener('click', () => {
  signOut();
  history.pushState(null, '', '/app/');
  route();
});

whenUnauthorized(() => {
  signOut();
  if (stop) {
    stop();
    stop = null;
  }
  showSignIn('The token was refused (expired or signed with another secret). Sign in again.');
});

window.addEventListener('popstate', route);
window.addEventListener(NAVIGATED, route);
// A sign-in link opened in a tab already on the app changes only the fragment.
window.addEventListener('hashchange', () => {
  if (location.hash.startsWith('#token=')) {
    takeTokenFromFragment();
    route();
  }
});
takeTokenFromFragment();
route();
