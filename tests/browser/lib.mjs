// Shared by the browser test and the app benchmark: Chromium, console-error capture, the API.
import { chromium } from 'playwright-core';

export const APP_URL = must('APP_URL'); // http://127.0.0.1:PORT/app/#token=…
export const BASE = new URL(APP_URL).origin;
export const TOKEN = decodeURIComponent(new URL(APP_URL).hash.replace(/^#token=/, ''));

function must(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set: run this through scripts/browser-test`);
  return v;
}

export async function launch() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    // This machine's network is closed: no background connections, no component updates.
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
}

/** Every console error and uncaught exception of a page, with the page's URL. */
export function watchErrors(page, errors) {
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(`${page.url()}: console error: ${msg.text()}`);
  });
  page.on('pageerror', (err) => errors.push(`${page.url()}: uncaught: ${err.message}`));
}

/** The JSON API, as the app calls it. */
export async function api(path, { method = 'GET', body, token = TOKEN } = {}) {
  const res = await fetch(BASE + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** A platform export with `n` fans (`@fan00001`, …), values from $1 up. */
export function exportCsv(n, extra = []) {
  const rows = ['Username,Display Name,Email,Subscription Tier,Total Spent,Last Seen'];
  for (let i = 1; i <= n; i++) {
    const id = String(i).padStart(5, '0');
    const tier = i % 3 === 0 ? 'VIP' : 'Basic';
    rows.push(`fan${id},Fan ${id},fan${id}@example.com,${tier},$${(i % 997) + 1}.00,2026-11-${String((i % 28) + 1).padStart(2, '0')}`);
  }
  return rows.concat(extra).join('\n') + '\n';
}
