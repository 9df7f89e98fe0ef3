// Segments: a builder whose count and sample follow the form as it is filled in (an unsaved
// preview, debounced), saving a segment, and the saved segments with their live counts.
import { api } from '../api.js';
import { html, render, update, num, when, errorBox, toast } from '../ui.js';

const WAIT_MS = 300;

/** The filter the form says: only the fields filled in. */
function filterOf(form) {
  const fd = new FormData(form);
  const f = {};
  const tags = (name) => fd.get(name).split(',').map((t) => t.trim()).filter(Boolean);
  const int = (name) => (fd.get(name) === '' ? null : Number(fd.get(name)));
  const usd = (name) => (fd.get(name) === '' ? null : Math.round(Number(fd.get(name)) * 100));
  const yesNo = (name) => ({ yes: true, no: false })[fd.get(name)] ?? null;
  for (const [key, name] of [['tagsAny', 'tagsAny'], ['tagsAll', 'tagsAll'], ['tagsNone', 'tagsNone']]) {
    if (tags(name).length) f[key] = tags(name);
  }
  if (fd.get('platform')) f.platform = fd.get('platform');
  const set = (key, v) => {
    if (v !== null) f[key] = v;
  };
  set('minValueCents', usd('min'));
  set('maxValueCents', usd('max'));
  set('inactiveDays', int('inactiveDays'));
  set('lastInboundWithinHours', int('inboundHours'));
  set('lastOutboundWithinHours', int('outboundHours'));
  set('subscribed', yesNo('subscribed'));
  set('unreadInbound', yesNo('unread'));
  if (fd.get('spent') !== '' && fd.get('spentDays') !== '') {
    f.spentCentsInLastDays = { cents: usd('spent'), days: int('spentDays') };
  }
  return f;
}

/** Words for a stored filter, for the list (and the automations' conditions). */
export function describe(f) {
  const parts = [];
  if (f.tagsAny) parts.push(`any of ${f.tagsAny.join(', ')}`);
  if (f.tagsAll) parts.push(`all of ${f.tagsAll.join(', ')}`);
  if (f.tagsNone) parts.push(`none of ${f.tagsNone.join(', ')}`);
  if (f.platform) parts.push(f.platform);
  if (f.minValueCents != null) parts.push(`value ≥ $${(f.minValueCents / 100).toFixed(2)}`);
  if (f.maxValueCents != null) parts.push(`value ≤ $${(f.maxValueCents / 100).toFixed(2)}`);
  if (f.spentCentsInLastDays) parts.push(`spent $${(f.spentCentsInLastDays.cents / 100).toFixed(2)} in ${f.spentCentsInLastDays.days} days`);
  if (f.inactiveDays != null) parts.push(`not seen for ${f.inactiveDays} days`);
  if (f.subscribed != null) parts.push(f.subscribed ? 'subscribed' : 'not subscribed');
  if (f.unreadInbound != null) parts.push(f.unreadInbound ? 'unread messages' : 'nothing unread');
  if (f.lastInboundWithinHours != null) parts.push(`wrote within ${f.lastInboundWithinHours} h`);
  if (f.lastOutboundWithinHours != null) parts.push(`messaged within ${f.lastOutboundWithinHours} h`);
  return parts.length ? parts.join(' · ') : 'every fan';
}

export async function show(main) {
  render(
    main,
    html`<h1>Segments</h1>
      <section class="card" aria-labelledby="builder-h">
        <h2 id="builder-h" class="mt0">New segment</h2>
        <form id="builder" class="stack">
          <label>Segment name <input name="name" required maxlength="200"></label>
          <div class="row">
            <label>Any of these tags <input name="tagsAny" placeholder="vip, whale"></label>
            <label>All of these tags <input name="tagsAll"></label>
            <label>None of these tags <input name="tagsNone"></label>
            <label>Platform <select name="platform"><option value="">any</option><option>onlyfans</option><option>fansly</option><option>other</option></select></label>
          </div>
          <div class="row">
            <label>Min value (USD) <input name="min" type="number" min="0" step="0.01" size="8"></label>
            <label>Max value (USD) <input name="max" type="number" min="0" step="0.01" size="8"></label>
            <label>Spent at least (USD) <input name="spent" type="number" min="0.01" step="0.01" size="8"></label>
            <label>in the last (days) <input name="spentDays" type="number" min="1" max="3650" size="5"></label>
          </div>
          <div class="row">
            <label>Not seen for (days) <input name="inactiveDays" type="number" min="1" max="3650" size="5"></label>
            <label>Wrote within (hours) <input name="inboundHours" type="number" min="1" max="87600" size="5"></label>
            <label>Messaged within (hours) <input name="outboundHours" type="number" min="1" max="87600" size="5"></label>
            <label>Subscribed <select name="subscribed"><option value="">either</option><option value="yes">yes</option><option value="no">no</option></select></label>
            <label>Unread messages <select name="unread"><option value="">either</option><option value="yes">yes</option><option value="no">no</option></select></label>
          </div>
          <p id="audience" aria-live="polite" class="muted">Counting…</p>
          <div class="row"><button type="submit">Save segment</button></div>
        </form>
      </section>
      <h2>Saved segments</h2>
      <div id="segments"><p class="muted">Loading…</p></div>`,
  );
  const form = main.querySelector('#builder');
  const audience = main.querySelector('#audience');
  let asked = 0;
  let timer;
  // The live count: the latest answer wins; an earlier one arriving late is dropped.
  const count = async () => {
    const mine = ++asked;
    try {
      const p = await api('/api/crm/segments/preview', { method: 'POST', body: { filter: filterOf(form) } });
      if (mine !== asked) return;
      update(
        audience,
        html`<strong id="audience-count">${num(p.count)}</strong> fan${p.count === 1 ? '' : 's'} now${p.sample.length
          ? html`, such as <span id="audience-sample">${p.sample.slice(0, 8).map((f) => f.handle).join(', ')}</span>`
          : ''}`,
      );
    } catch (err) {
      if (mine === asked) update(audience, errorBox(err));
    }
  };
  form.addEventListener('input', () => {
    clearTimeout(timer);
    timer = setTimeout(count, WAIT_MS);
  });
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const button = form.querySelector('button');
    button.disabled = true;
    try {
      const name = new FormData(form).get('name');
      const s = await api('/api/crm/segments', { method: 'POST', body: { name, filter: filterOf(form) } });
      toast(`Segment “${s.name}” saved`);
      form.reset();
      count();
      await load();
    } catch (err) {
      toast(`Not saved: ${err.message}`);
    }
    button.disabled = false;
  });
  const box = main.querySelector('#segments');
  const load = async () => {
    try {
      const page = await api('/api/crm/segments?limit=50');
      const counts = await Promise.all(page.items.map((s) => api(`/api/crm/segments/${s.id}/preview`)));
      update(
        box,
        page.items.length
          ? html`<div class="table-wrap"><table>
            <thead><tr><th scope="col">Segment</th><th scope="col">Filter</th><th scope="col" class="num">Fans now</th><th scope="col"></th></tr></thead>
            <tbody>${page.items.map(
              (s, i) => html`<tr data-segment="${s.id}"><td>${s.name}<div class="muted">${when(s.createdAt)}</div></td>
                <td>${describe(s.filter)}</td><td class="num">${num(counts[i].count)}</td>
                <td><button type="button" class="secondary" data-delete="${s.id}" aria-label="Delete ${s.name}">Delete</button></td></tr>`,
            )}</tbody></table></div>`
          : html`<p class="muted">No segments yet.</p>`,
      );
    } catch (err) {
      update(box, errorBox(err));
    }
  };
  box.addEventListener('click', async (e) => {
    const id = e.target.dataset?.delete;
    if (!id) return;
    try {
      await api(`/api/crm/segments/${id}`, { method: 'DELETE' });
      await load();
    } catch (err) {
      toast(`Not deleted: ${err.message}`);
    }
  });
  count();
  await load();
}
