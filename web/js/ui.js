// Small helpers for building pages: escaping, formatting, elements.

/** HTML-escapes a value for use in a template. */
export function esc(v) {
  return String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

/** Builds HTML from a template literal, escaping every interpolated value except raw(). */
export function html(strings, ...values) {
  let out = strings[0];
  values.forEach((v, i) => {
    if (Array.isArray(v)) out += v.map((x) => (x instanceof Raw ? x.s : esc(x))).join('');
    else out += v instanceof Raw ? v.s : esc(v);
    out += strings[i + 1];
  });
  return new Raw(out);
}

class Raw {
  constructor(s) {
    this.s = s;
  }
  toString() {
    return this.s;
  }
}

export function raw(s) {
  return new Raw(s);
}

/** Sets an element's content from html``. */
export function render(el, content) {
  renderedOf.delete(el);
  el.innerHTML = String(content);
}

/**
 * Like render, for refreshes: when the content would be the same as the last update's, the
 * element is left alone, so focus, selection and screen readers are not disturbed. Returns
 * whether it changed.
 */
export function update(el, content) {
  const s = String(content);
  if (renderedOf.get(el) === s) return false;
  el.innerHTML = s;
  renderedOf.set(el, s);
  return true;
}
const renderedOf = new WeakMap();

const money = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD' });
export function cents(c) {
  return money.format((c ?? 0) / 100);
}

export function num(n) {
  return new Intl.NumberFormat('en-US').format(n ?? 0);
}

export function when(ts) {
  if (!ts) return '';
  const d = new Date(ts);
  return d.toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'short' });
}

export function time(ts) {
  if (!ts) return '';
  return new Date(ts).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
}

export function pct(x) {
  return `${((x ?? 0) * 100).toFixed(1)}%`;
}

/** Shows a short message at the bottom of the screen. */
let toastTimer;
export function toast(msg) {
  const el = document.getElementById('toast');
  el.textContent = msg;
  el.classList.add('show');
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove('show'), 4000);
}

/** An error shown in place, with the API's message. */
export function errorBox(err) {
  return html`<p class="error" role="alert">${err.message || String(err)}</p>`;
}

/** The initials of a fan, for an avatar without a picture. */
export function avatar(fan) {
  if (fan.avatarUrl) return html`<img class="avatar" src="${fan.avatarUrl}" alt="">`;
  const name = fan.name || fan.handle.replace(/^@/, '');
  const initials = name
    .split(/\s+/)
    .map((w) => w[0] || '')
    .join('')
    .slice(0, 2)
    .toUpperCase();
  return html`<span class="avatar" aria-hidden="true">${initials}</span>`;
}

/** Runs `f` every `ms` until the returned stop function is called (no overlap). */
export function every(ms, f) {
  let stopped = false;
  let timer;
  const tick = async () => {
    if (stopped) return;
    try {
      await f();
    } catch (e) {
      if (!stopped) console.warn('refresh failed:', e.message);
    }
    if (!stopped) timer = setTimeout(tick, ms);
  };
  timer = setTimeout(tick, ms);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

/** Downloads text as a file. */
export function download(name, text, type = 'text/csv;charset=utf-8') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
