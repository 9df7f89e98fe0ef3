// Fans: the filtered, paged list (with selection for campaigns and CSV export) and a fan's page.
import { api, qs } from '../api.js';
import { html, render, cents, when, errorBox, toast, download } from '../ui.js';
import { toCsv } from '../csv.js';
import { go } from '../nav.js';
import { showTimeline } from './automations.js';

const PAGE = 50;
export const MAX_RECIPIENTS = 100;

// Fans picked for a campaign, kept for this tab: {id: handle}.
const SEL = 'fanqueue.selection';
export function selection() {
  try {
    return JSON.parse(sessionStorage.getItem(SEL)) || {};
  } catch {
    return {};
  }
}
export function setSelection(s) {
  sessionStorage.setItem(SEL, JSON.stringify(s));
}

export async function showList(main) {
  const params = new URLSearchParams(location.search);
  const tag = params.get('tag') || '';
  const min = params.get('min') || '';
  const q = params.get('q') || '';
  const offset = Math.max(0, Number(params.get('offset')) || 0);
  render(
    main,
    html`<h1>Fans</h1>
      <form id="filters" class="row card" role="search">
        <label>Tag <input name="tag" value="${tag}" size="10"></label>
        <label>Min value (USD) <input name="min" type="number" min="0" step="0.01" value="${min}" size="8"></label>
        <label class="grow">Search (handle or name) <input name="q" type="search" maxlength="100" value="${q}"></label>
        <button type="submit">Filter</button>
        <button type="button" class="secondary" id="export">Export CSV</button>
      </form>
      <div class="row spaced">
        <span id="selected" aria-live="polite"></span>
        <a class="button" href="/app/campaigns" id="compose">Compose campaign</a>
        <button type="button" class="secondary" id="clear-selection">Clear selection</button>
      </div>
      <div id="fans"><p class="muted">Loading…</p></div>`,
  );
  const filterQuery = () => ({ tag, q, minValueCents: min ? Math.round(Number(min) * 100) : '' });
  const showSelected = () => {
    const n = Object.keys(selection()).length;
    main.querySelector('#selected').textContent = `${n} selected${n > MAX_RECIPIENTS ? ` (a campaign takes at most ${MAX_RECIPIENTS})` : ''}`;
    main.querySelector('#compose').textContent = n ? `Compose campaign (${n})` : 'Compose campaign';
  };
  showSelected();

  main.querySelector('#filters').addEventListener('submit', (e) => {
    e.preventDefault();
    const fd = new FormData(e.target);
    go('/app/fans' + qs({ tag: fd.get('tag').trim(), min: fd.get('min'), q: fd.get('q').trim() }));
  });
  main.querySelector('#clear-selection').addEventListener('click', () => {
    setSelection({});
    for (const b of main.querySelectorAll('input[data-fan]')) b.checked = false;
    showSelected();
  });

  const box = main.querySelector('#fans');
  let page;
  try {
    page = await api('/api/crm/fans' + qs({ ...filterQuery(), limit: PAGE, offset }));
  } catch (e) {
    render(box, errorBox(e));
    return;
  }
  const sel = selection();
  const items = page.items;
  const link = (o) => '/app/fans' + qs({ tag, min, q, offset: o || '' });
  render(
    box,
    html`<p class="muted" id="fan-count">${page.total} fans${tag || min || q ? ' match the filters' : ''}${q ? html` and “${q}”` : ''}</p>
      <div class="table-wrap"><table>
        <thead><tr><th scope="col"><span class="hide-narrow">Select</span></th><th scope="col">Fan</th><th scope="col" class="hide-narrow">Tags</th><th scope="col" class="num">Value</th><th scope="col" class="hide-narrow">Last seen</th></tr></thead>
        <tbody>${items.map(
          (f) => html`<tr>
            <td><input type="checkbox" data-fan="${f.id}" data-handle="${f.handle}" aria-label="Select ${f.handle}" ${sel[f.id] ? 'checked' : ''}></td>
            <td><a href="/app/fans/${f.id}">${f.handle}</a><div class="muted">${f.name || ''}</div></td>
            <td class="hide-narrow">${f.tags.map((t) => html`<span class="tag">${t}</span>`)}</td>
            <td class="num">${cents(f.valueCents)}</td>
            <td class="hide-narrow">${when(f.lastSeenAt)}</td>
          </tr>`,
        )}</tbody>
      </table></div>
      <nav class="pager" aria-label="Pages">
        ${offset > 0 ? html`<a href="${link(Math.max(0, offset - PAGE))}">← Previous</a>` : ''}
        <span class="muted">${page.total ? offset + 1 : 0}–${Math.min(offset + PAGE, page.total)} of ${page.total}</span>
        ${offset + PAGE < page.total ? html`<a href="${link(offset + PAGE)}">Next →</a>` : ''}
      </nav>`,
  );
  box.addEventListener('change', (e) => {
    const b = e.target.closest('input[data-fan]');
    if (!b) return;
    const s = selection();
    if (b.checked) s[b.dataset.fan] = b.dataset.handle;
    else delete s[b.dataset.fan];
    setSelection(s);
    showSelected();
  });

  main.querySelector('#export').addEventListener('click', async (e) => {
    const button = e.target;
    button.disabled = true;
    try {
      // Every fan the filters and the search match, a page of 200 at a time.
      const all = [];
      for (let o = 0; ; o += 200) {
        const p = await api('/api/crm/fans' + qs({ ...filterQuery(), limit: 200, offset: o }));
        all.push(...p.items);
        button.textContent = `Exporting… ${all.length}/${p.total}`;
        if (o + 200 >= p.total) break;
      }
      const rows = all.map((f) => [f.id, f.handle, f.name, f.email, f.tags.join(';'), (f.valueCents / 100).toFixed(2), f.lastSeenAt, f.notes]);
      download('fans.csv', toCsv(['id', 'handle', 'name', 'email', 'tags', 'value_usd', 'last_seen_at', 'notes'], rows));
      toast(`Exported ${rows.length} fans`);
    } catch (err) {
      toast(`Export failed: ${err.message}`);
    } finally {
      button.disabled = false;
      button.textContent = 'Export CSV';
    }
  });
}

export async function showFan(page, { id }) {
  render(page, html`<div id="fan-page"><p class="muted">Loading…</p></div><section id="fan-timeline" aria-labelledby="timeline-h"></section>`);
  // Everything below stays inside this element, even if the reader moves on meanwhile.
  const main = page.querySelector('#fan-page');
  let fan;
  try {
    fan = await api(`/api/crm/fans/${id}`);
  } catch (e) {
    render(main, html`<h1>Fan</h1>${errorBox(e)}`);
    return;
  }
  const draw = () =>
    render(
      main,
      html`<p><a href="/app/fans">← Fans</a></p>
      <h1>${fan.name || fan.handle} <span class="muted">${fan.handle}</span></h1>
      <div class="grid2">
        <form id="fan-form" class="stack card">
          <label>Name <input name="name" value="${fan.name || ''}"></label>
          <label>Email <input name="email" type="email" value="${fan.email || ''}"></label>
          <label>Tags (comma-separated) <input name="tags" value="${fan.tags.join(', ')}"></label>
          <label>Value (USD) <input name="value" type="number" min="0" step="0.01" value="${(fan.valueCents / 100).toFixed(2)}"></label>
          <label>Notes <textarea name="notes">${fan.notes || ''}</textarea></label>
          <div class="row"><button type="submit">Save</button>
            <button type="button" class="secondary" id="open-conversation">Open conversation</button>
            <button type="button" class="secondary" id="select-fan">Add to campaign</button></div>
          <p class="muted">Last seen ${when(fan.lastSeenAt) || 'never'} · added ${when(fan.createdAt)}</p>
        </form>
        <section aria-labelledby="history-h">
          <h2 id="history-h" class="mt0">Value history</h2>
          <div class="table-wrap"><table>
            <thead><tr><th scope="col">When</th><th scope="col" class="num">Value</th><th scope="col" class="num">Change</th><th scope="col">Source</th></tr></thead>
            <tbody id="history">${history(fan.valueHistory)}</tbody>
          </table></div>
          <button type="button" class="link" id="all-history">Show all</button>
        </section>
      </div>`,
    );
  draw();
  const wire = () => {
    main.querySelector('#fan-form').addEventListener('submit', async (e) => {
      e.preventDefault();
      const fd = new FormData(e.target);
      const body = {
        name: fd.get('name').trim() || null,
        email: fd.get('email').trim() || null,
        notes: fd.get('notes').trim() || null,
        tags: fd.get('tags').split(',').map((t) => t.trim()).filter(Boolean),
        valueCents: Math.round(Number(fd.get('value') || 0) * 100),
      };
      try {
        await api(`/api/crm/fans/${id}`, { method: 'PUT', body });
        fan = await api(`/api/crm/fans/${id}`);
        draw();
        wire();
        toast('Saved');
      } catch (err) {
        toast(`Not saved: ${err.message}`);
      }
    });
    main.querySelector('#open-conversation').addEventListener('click', async () => {
      try {
        const c = await api('/api/crm/conversations', { method: 'POST', body: { fanId: Number(id) } });
        go(`/app/messages/onlyfans/${c.id}`);
      } catch (err) {
        toast(err.message);
      }
    });
    main.querySelector('#select-fan').addEventListener('click', () => {
      setSelection({ ...selection(), [fan.id]: fan.handle });
      toast(`${fan.handle} added to the campaign's recipients`);
    });
    main.querySelector('#all-history').addEventListener('click', async (e) => {
      try {
        const items = [];
        for (let o = 0; ; o += 200) {
          const p = await api(`/api/crm/fans/${id}/value-history` + qs({ limit: 200, offset: o }));
          items.push(...p.items);
          if (o + 200 >= p.total || items.length >= 2000) break;
        }
        render(main.querySelector('#history'), history(items));
        e.target.remove();
      } catch (err) {
        toast(err.message);
      }
    });
  };
  wire();
  // What the automations did to this fan, kept fresh while the page is open.
  return showTimeline(page.querySelector('#fan-timeline'), id);
}

function history(items) {
  if (!items.length) return html`<tr><td colspan="4" class="muted">No changes yet.</td></tr>`;
  return html`${items.map(
    (h) => html`<tr><td>${when(h.at)}</td><td class="num">${cents(h.valueCents)}</td><td class="num">${h.deltaCents >= 0 ? '+' : ''}${cents(h.deltaCents)}</td><td>${h.source}</td></tr>`,
  )}`;
}
