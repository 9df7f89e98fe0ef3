// The JSON API with the bearer token kept in this browser's localStorage.

const KEY = 'fanqueue.token';

export function token() {
  return localStorage.getItem(KEY);
}

export function signIn(t) {
  localStorage.setItem(KEY, t.trim());
}

export function signOut() {
  localStorage.removeItem(KEY);
}

/** The token's claims (not verified here: the server does that on every call). */
export function claims() {
  const t = token();
  if (!t) return null;
  try {
    const part = t.split('.')[1].replace(/-/g, '+').replace(/_/g, '/');
    return JSON.parse(atob(part));
  } catch {
    return null;
  }
}

export function isOperator() {
  return claims()?.role === 'operator';
}

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    // The request field at fault, when the API names one (`steps[1].send.content`).
    this.field = field;
  }
}

/** Called when the server refuses the token (401): the app shows the sign-in form. */
let onUnauthorized = () => {};
export function whenUnauthorized(f) {
  onUnauthorized = f;
}

/**
 * Calls the API: `body` is sent as JSON, `form` (FormData) as multipart. Resolves to the
 * parsed answer; rejects with an ApiError carrying the API's error code and message.
 */
export async function api(path, { method = 'GET', body, form, signal } = {}) {
  const headers = { Authorization: `Bearer ${token()}` };
  let payload;
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    payload = JSON.stringify(body);
  } else if (form) {
    payload = form;
  }
  const res = await fetch(path, { method, headers, body: payload, signal });
  const text = await res.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { error: { code: 'bad_answer', message: text.slice(0, 200) } };
    }
  }
  if (!res.ok) {
    if (res.status === 401) onUnauthorized();
    const err = data?.error ?? {};
    throw new ApiError(res.status, err.code ?? 'http_' + res.status, err.message ?? res.statusText, err.field);
  }
  return data;
}

/** Query string from an object, leaving out empty values. */
export function qs(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, v);
  }
  const s = q.toString();
  return s ? '?' + s : '';
}
