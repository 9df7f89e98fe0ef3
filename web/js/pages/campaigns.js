// Campaigns: compose to the selected fans, the list with live metrics, one campaign's recipients.
import { api, qs } from '../api.js';
import { html, render, update, when, num, cents, errorBox, toast, every } from '../ui.js';
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
      <h2>All campaigns</h2>
      <div id="campaigns"><p class="muted">Loading…</p></div>`,
  );
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
          <thead><tr><th scope="col">Campaign</th><th scope="col">Status</th><th scope="col" class="num">Recipients</th><th scope="col" class="num">Queued</th><th scope="col" class="num">Sent</th><th scope="col" class="num hide-narrow">Delivered</th><th scope="col" class="num">Failed</th><th scope="col" class="num hide-narrow">Opened</th><th scope="col" class="num hide-narrow">Revenue</th></tr></thead>
          <tbody>${page.items.map(
            (c) => html`<tr data-campaign="${c.id}"><td><a href="/app/campaigns/${c.id}">${c.name}</a><div class="muted">${when(c.createdAt)}</div></td><td>${c.status}</td>
              <td class="num">${num(c.metrics.total)}</td><td class="num">${num(c.metrics.queued)}</td><td class="num">${num(c.metrics.sent)}</td><td class="num hide-narrow">${num(c.metrics.delivered)}</td>
              <td class="num">${num(c.metrics.failed)}</td><td class="num hide-narrow">${num(c.metrics.opened)}</td><td class="num hide-narrow">${cents(c.metrics.revenueCents)}</td></tr>`,
          )}</tbody></table></div>`
        : html`<p class="muted">No campaigns yet.</p>`,
    );
  };
  try {
    await load();
  } catch (e) {
    render(box, errorBox(e));
  }
  return every(2000, load);
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
      html`<h1>${c.name} <span class="badge">${c.status}</span></h1>
        <p class="muted">${c.template.content}</p>
        <div class="figures">
          ${[['total', 'recipients'], ['queued', 'queued'], ['sent', 'sent'], ['delivered', 'delivered'], ['failed', 'failed'], ['opened', 'opened']].map(
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
