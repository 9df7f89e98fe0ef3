// Campaigns: compose to an audience (a segment, every fan, or the selected fans) with
// exclusions and a start time, or to the selected fans at once; the list with live metrics and
// pause, resume and cancel; one campaign's figures and recipients.
import { api, qs } from '../api.js';
import { html, raw, render, update, when, num, cents, errorBox, toast, every } from '../ui.js';
import { selection, setSelection, MAX_RECIPIENTS } from './fans.js';
import { go } from '../nav.js';

export async function showList(main) {
  const sel = selection();
  const ids = Object.keys(sel).map(Number);
  const tooMany = ids.length > MAX_RECIPIENTS;
  render(
    main,
    html`<h1>Campaigns</h1>
      <section class="card" aria-labelledby="compose-h">
        <h2 id="compose-h" class="mt0">New campaign</h2>
        ${ids.length
          ? html`<p id="recipient-count"><strong>${ids.length}</strong> recipient${ids.length === 1 ? '' : 's'}:
              ${Object.values(sel).slice(0, 12).join(', ')}${ids.length > 12 ? '…' : ''}
              (<a href="/app/fans">change</a>)</p>
              ${tooMany ? html`<p class="error" role="alert">A campaign goes to at most ${MAX_RECIPIENTS} fans: unselect ${ids.length - MAX_RECIPIENTS}.</p>` : ''}`
          : html`<p id="recipient-count">No recipients yet: select fans in the <a href="/app/fans">fans list</a>.</p>`}
        <form id="compose" class="stack">
          <label>Campaign name <input name="campaignName" required maxlength="200"></label>
          <label>Message <textarea name="content" required maxlength="5000"></textarea></label>
          <div class="row"><button type="submit" ${!ids.length || tooMany ? 'disabled' : ''}>Send to ${ids.length} fan${ids.length === 1 ? '' : 's'}</button></div>
        </form>
      </section>
      <section class="card" aria-labelledby="audience-h">
        <h2 id="audience-h" class="mt0">New campaign to an audience</h2>
        <form id="to-audience" class="stack">
          <label>Campaign name <input name="name" required maxlength="200"></label>
          <label>Message <textarea name="content" required maxlength="5000"></textarea></label>
          <div class="row">
            <label>Audience <select name="audience" id="audience-pick"><option value="all">every fan</option>${ids.length && !tooMany ? html`<option value="selected">the ${ids.length} selected fans</option>` : ''}</select></label>
            <label>Price (USD) <input name="price" type="number" min="0" step="0.01" size="8"></label>
            <label>Starts at <input name="at" type="datetime-local" id="starts-at"></label>
          </div>
          <fieldset class="row"><legend>Skip fans who, when their turn comes,</legend>
            <label>are in <select name="excludeSegment" id="exclude-pick"><option value="">no segment</option></select></label>
            <label>were messaged within (hours) <input name="messagedWithin" type="number" min="1" max="87600" size="5"></label>
            <label><input type="checkbox" name="unread"> have unread messages</label>
          </fieldset>
          <div class="row"><button type="submit">Create campaign</button></div>
        </form>
      </section>
      <h2>All campaigns</h2>
      <div id="campaigns"><p class="muted">Loading…</p></div>`,
  );
  const toAudience = main.querySelector('#to-audience');
  api('/api/crm/segments' + qs({ limit: 200 }))
    .then((page) => {
      const options = page.items.map((seg) => html`<option value="${seg.id}">${seg.name}</option>`).join('');
      main.querySelector('#audience-pick').insertAdjacentHTML('beforeend', options.replaceAll('value="', 'value="segment:'));
      main.querySelector('#exclude-pick').insertAdjacentHTML('beforeend', options);
    })
    .catch((err) => toast(`Segments not loaded: ${err.message}`));
  toAudience.addEventListener('submit', async (e) => {
    e.preventDefault();
    const fd = new FormData(toAudience);
    const pick = fd.get('audience');
    const audience = pick === 'selected' ? { recipientIds: ids }
      : pick.startsWith('segment:') ? { segmentId: Number(pick.slice('segment:'.length)) }
      : { filter: {} };
    const exclude = {};
    if (fd.get('excludeSegment')) exclude.segmentId = Number(fd.get('excludeSegment'));
    if (fd.get('messagedWithin')) exclude.messagedWithinHours = Number(fd.get('messagedWithin'));
    if (fd.get('unread')) exclude.unreadInbound = true;
    const body = { name: fd.get('name'), content: fd.get('content'), audience, exclude };
    if (fd.get('price')) body.priceCents = Math.round(Number(fd.get('price')) * 100);
    if (fd.get('at')) body.schedule = { at: new Date(fd.get('at')).toISOString() };
    const button = toAudience.querySelector('button');
    button.disabled = true;
    try {
      const c = await api('/api/crm/campaigns', { method: 'POST', body });
      if (pick === 'selected') setSelection({});
      toast(c.status === 'scheduled' ? `Campaign scheduled for ${when(c.startsAt)}` : 'Campaign started');
      go(`/app/campaigns/${c.id}`);
    } catch (err) {
      toast(`Not created: ${err.message}`);
      button.disabled = false;
    }
  });
  main.querySelector('#compose').addEventListener('submit', async (e) => {
    e.preventDefault();
    const fd = new FormData(e.target);
    const button = e.target.querySelector('button');
    button.disabled = true;
    try {
      const out = await api('/api/messages/bulk', {
        method: 'POST',
        body: { recipientIds: ids, content: fd.get('content'), campaignName: fd.get('campaignName') },
      });
      setSelection({});
      toast(`Campaign queued: ${out.queued} messages, done about ${when(out.estimatedCompletionTime)}`);
      go(`/app/campaigns/${out.campaignId}`);
    } catch (err) {
      toast(`Not sent: ${err.message}`);
      button.disabled = false;
    }
  });
  const box = main.querySelector('#campaigns');
  const load = async () => {
    const page = await api('/api/crm/campaigns' + qs({ limit: 50 }));
    update(
      box,
      page.items.length
        ? html`<div class="table-wrap"><table>
          <thead><tr><th scope="col">Campaign</th><th scope="col">Status</th><th scope="col" class="num">Recipients</th><th scope="col" class="num">Remaining</th><th scope="col" class="num">Queued</th><th scope="col" class="num">Sent</th><th scope="col" class="num hide-narrow">Delivered</th><th scope="col" class="num">Failed</th><th scope="col" class="num hide-narrow">Opened</th><th scope="col" class="num hide-narrow">Revenue</th></tr></thead>
          <tbody>${page.items.map(
            (c) => html`<tr data-campaign="${c.id}"><td><a href="/app/campaigns/${c.id}">${c.name}</a><div class="muted">${c.status === 'scheduled' ? `starts ${when(c.startsAt)}` : when(c.createdAt)}</div></td>
              <td><span data-status>${c.status}</span> ${controls(c)}</td>
              <td class="num">${num(c.metrics.audience)}</td><td class="num">${num(c.metrics.remaining)}</td><td class="num">${num(c.metrics.queued)}</td><td class="num">${num(c.metrics.sent)}</td><td class="num hide-narrow">${num(c.metrics.delivered)}</td>
              <td class="num">${num(c.metrics.failed)}</td><td class="num hide-narrow">${num(c.metrics.opened)}</td><td class="num hide-narrow">${cents(c.metrics.revenueCents)}</td></tr>`,
          )}</tbody></table></div>`
        : html`<p class="muted">No campaigns yet.</p>`,
    );
  };
  box.addEventListener('click', (e) => control(e, load));
  try {
    await load();
  } catch (e) {
    render(box, errorBox(e));
  }
  return every(2000, load);
}

/** Pause, resume and cancel buttons for what a campaign to an audience may do now. */
function controls(c) {
  if (c.exclude == null) return '';
  const button = (what, label) =>
    html`<button type="button" class="secondary small" data-control="${what}" data-id="${c.id}" aria-label="${label} ${c.name}">${label}</button>`;
  const out = [];
  if (c.status === 'active') out.push(button('pause', 'Pause'));
  if (c.status === 'paused') out.push(button('resume', 'Resume'));
  if (['active', 'paused', 'scheduled'].includes(c.status)) out.push(button('cancel', 'Cancel'));
  return raw(out.join(' '));
}

/** A click on one of `controls`' buttons: asks the server, then reloads. */
async function control(e, reload) {
  const { control: what, id } = e.target.dataset ?? {};
  if (!what) return;
  e.target.disabled = true;
  try {
    const c = await api(`/api/crm/campaigns/${id}/${what}`, { method: 'POST' });
    toast(`Campaign ${c.status}`);
    await reload();
  } catch (err) {
    toast(`Not done: ${err.message}`);
    e.target.disabled = false;
  }
}

export async function showCampaign(main, { id }) {
  render(main, html`<p><a href="/app/campaigns">← Campaigns</a></p><div id="campaign"><p class="muted">Loading…</p></div>`);
  const box = main.querySelector('#campaign');
  const load = async () => {
    const [c, recipients] = await Promise.all([
      api(`/api/crm/campaigns/${id}`),
      api(`/api/crm/campaigns/${id}/recipients` + qs({ limit: 200 })),
    ]);
    const m = c.metrics;
    const focused = document.activeElement?.id;
    update(
      box,
      html`<h1>${c.name} <span class="badge" id="campaign-status">${c.status}</span></h1>
        <p class="muted">${c.template.content}</p>
        ${c.exclude != null
          ? html`<p class="row">${controls(c)}${c.status === 'scheduled' ? html` <span>Starts ${when(c.startsAt)}</span>` : ''}${c.estimatedCompletionTime ? html` <span class="muted">done about ${when(c.estimatedCompletionTime)}</span>` : ''}</p>
            <div class="figures">${[['audience', 'audience'], ['remaining', 'remaining'], ['excluded', 'excluded'], ['cancelled', 'cancelled']].map(
              ([k, label]) => html`<div class="figure"><div class="value" data-metric="${k}">${num(m[k])}</div><div class="label">${label}</div></div>`,
            )}</div>
            ${Object.keys(m.excludedBy).length ? html`<p class="muted">Excluded: ${Object.entries(m.excludedBy).map(([why, n]) => `${n} ${why.replaceAll('_', ' ')}`).join(', ')}</p>` : ''}`
          : ''}
        <div class="figures">
          ${[['total', 'messages'], ['queued', 'queued'], ['sent', 'sent'], ['delivered', 'delivered'], ['failed', 'failed'], ['opened', 'opened']].map(
            ([k, label]) => html`<div class="figure"><div class="value" data-metric="${k}">${num(m[k])}</div><div class="label">${label}</div></div>`,
          )}
          <div class="figure"><div class="value">${cents(m.revenueCents)}</div><div class="label">revenue</div></div>
        </div>
        <div class="row spaced"><button type="button" id="retry-failed" ${m.failed ? '' : 'disabled'}>Retry failed (${m.failed})</button></div>
        <h2>Recipients</h2>
        <div class="table-wrap"><table><thead><tr><th scope="col">Fan</th><th scope="col">Status</th><th scope="col" class="hide-narrow">Sent</th><th scope="col">Error</th></tr></thead>
        <tbody>${recipients.items.map(
          (r) => html`<tr data-recipient="${r.message.fanId}"><td><a href="/app/fans/${r.message.fanId}">${r.handle}</a> <span class="muted">${r.name || ''}</span></td>
            <td class="status-${r.message.status}">${r.message.status}</td><td class="hide-narrow">${when(r.message.sentAt)}</td><td>${r.message.error || ''}</td></tr>`,
        )}</tbody></table></div>`,
    );
    if (focused) document.getElementById(focused)?.focus();
  };
  box.addEventListener('click', async (e) => {
    if (e.target.dataset?.control) return control(e, load);
    if (e.target.id !== 'retry-failed') return;
    e.target.disabled = true;
    try {
      const out = await api(`/api/crm/campaigns/${id}/retry-failed`, { method: 'POST' });
      toast(`${out.requeued} queued again`);
      await load();
    } catch (err) {
      toast(`Retry failed: ${err.message}`);
      e.target.disabled = false;
    }
  });
  try {
    await load();
  } catch (e) {
    render(box, errorBox(e));
    return;
  }
  return every(2000, load);
}
