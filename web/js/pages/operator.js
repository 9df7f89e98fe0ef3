// Operator: the queue, health, failed messages with retry, jobs. Refreshes every 3 s.
import { api, qs, isOperator } from '../api.js';
import { html, render, update, when, num, errorBox, toast, every } from '../ui.js';

export async function show(main) {
  const op = isOperator();
  render(
    main,
    html`<div id="operator"><h1>${op ? 'Operator' : 'Queue'}</h1>
      ${op ? '' : html`<p class="muted">Your own backlog and failed messages. The whole queue and health need an operator's token (<code>fanqueue token --user-id 1 --operator --url</code>).</p>`}
      <section aria-labelledby="queue-h"><h2 id="queue-h">Queue</h2><div id="queue"></div></section>
      ${op ? html`<section aria-labelledby="backlogs-h"><h2 id="backlogs-h">Backlog per creator</h2><div id="backlogs"></div></section>` : ''}
      ${op ? html`<section aria-labelledby="health-h"><h2 id="health-h">Health</h2><div id="health"></div></section>` : ''}
      <section aria-labelledby="failed-h"><h2 id="failed-h">Failed messages</h2><div id="failed"></div></section>
      <section aria-labelledby="jobs-h"><h2 id="jobs-h">Jobs</h2><div id="jobs"></div></section>
      <p class="muted" id="refreshed" aria-live="off"></p></div>`,
  );
  // Queries stay inside this page's element, even once the reader has moved on.
  const root = main.querySelector('#operator');
  const $ = (s) => root.querySelector(s);
  const load = async () => {
    const [status, failed, jobs, health, backlogs] = await Promise.all([
      api('/api/onlyfans/messages/status'),
      api('/api/onlyfans/messages/failed' + qs({ limit: 50 })),
      api('/api/jobs' + qs({ limit: 20 })),
      op ? api('/api/monitoring/onlyfans') : null,
      op ? api('/api/onlyfans/messages/backlogs' + qs({ limit: 20 })) : null,
    ]);
    if (backlogs) {
      update(
        $('#backlogs'),
        backlogs.items.length
          ? html`<div class="table-wrap"><table><thead><tr><th scope="col">Creator</th><th scope="col" class="num">Waiting</th><th scope="col" class="hide-narrow">Oldest queued</th><th scope="col">Drained by</th></tr></thead>
            <tbody>${backlogs.items.map(
              (b) => html`<tr data-backlog="${b.userId}"><td>${b.userId}</td><td class="num">${num(b.waiting)}</td><td class="hide-narrow">${when(b.oldestQueuedAt)}</td><td>${when(b.drainedBy)}</td></tr>`,
            )}</tbody></table></div><p class="muted">${backlogs.total} creator(s) with messages waiting</p>`
          : html`<p class="muted" id="no-backlog">No creator has messages waiting.</p>`,
      );
    }
    const backlog = health?.components?.backlog;
    update(
      $('#queue'),
      html`<div class="figures">
        <div class="figure"><div class="value" data-figure="queueDepth">${num(status.queueDepth)}</div><div class="label">queue depth</div></div>
        <div class="figure"><div class="value" data-figure="messagesInFlight">${num(status.messagesInFlight)}</div><div class="label">in flight</div></div>
        ${status.dlqCount !== null && status.dlqCount !== undefined ? html`<div class="figure"><div class="value" data-figure="dlqCount">${num(status.dlqCount)}</div><div class="label">dead-letter queue</div></div>` : ''}
        ${status.failed !== undefined ? html`<div class="figure"><div class="value" data-figure="failed">${num(status.failed)}</div><div class="label">failed</div></div>` : ''}
        ${backlog ? html`<div class="figure"><div class="value">${backlog.oldestQueuedAgeSecs != null ? `${Math.round(backlog.oldestQueuedAgeSecs)} s` : '–'}</div><div class="label">oldest waiting message</div></div>` : ''}
        <div class="figure"><div class="value small-value">${when(status.lastProcessedAt) || '–'}</div><div class="label">last delivery</div></div>
      </div>`,
    );
    if (health) {
      update(
        $('#health'),
        html`<p>Overall: <strong data-health="overall">${health.status}</strong> · ${health.workersAlive} worker(s), ${health.dispatchersAlive} dispatcher(s) alive</p>
        <div class="table-wrap"><table><thead><tr><th scope="col">Component</th><th scope="col">Status</th><th scope="col">Details</th></tr></thead>
        <tbody>${Object.entries(health.components).map(
          ([name, c]) => html`<tr><td>${name}</td><td>${c.status}</td><td class="muted">${Object.entries(c)
            .filter(([k]) => k !== 'status')
            .map(([k, v]) => `${k}: ${typeof v === 'number' ? Math.round(v * 100) / 100 : v}`)
            .join(', ')}</td></tr>`,
        )}</tbody></table></div>`,
      );
    }
    update(
      $('#failed'),
      failed.items.length
        ? html`<div class="table-wrap"><table><thead><tr><th scope="col">Message</th><th scope="col">Reason</th><th scope="col" class="hide-narrow">Failed</th><th scope="col"><span class="hide-narrow">Action</span></th></tr></thead>
          <tbody>${failed.items.map(
            (m) => html`<tr data-failed="${m.id}"><td>#${m.id} ${m.conversationId ? html`<a href="/app/messages/onlyfans/${m.conversationId}">“${m.content.slice(0, 40)}”</a>` : m.content.slice(0, 40)}
              <div class="muted">fan ${m.fanId}${op ? `, creator ${m.userId}` : ''}, ${m.attempts} attempt(s)</div></td>
              <td class="error">${m.reason || ''}</td><td class="hide-narrow">${when(m.failedAt)}</td>
              <td><button type="button" class="secondary" data-retry="${m.id}">Retry</button></td></tr>`,
          )}</tbody></table></div><p class="muted">${failed.total} failed in all</p>`
        : html`<p class="muted" id="no-failed">No failed messages.</p>`,
    );
    update(
      $('#jobs'),
      html`<div class="table-wrap"><table><thead><tr><th scope="col">Job</th><th scope="col">Status</th><th scope="col">Progress</th><th scope="col" class="hide-narrow">Created</th></tr></thead>
        <tbody>${jobs.items.map((j) => {
          const p = j.progress;
          return html`<tr><td>${j.kind}<div class="muted small">${j.id}</div></td><td>${j.status}${j.error ? html`<div class="error">${j.error}</div>` : ''}</td>
            <td>${p && p.total ? html`<progress max="${p.total}" value="${p.done}" aria-label="${j.kind} ${j.id} progress"></progress> ${num(p.done)}/${num(p.total)}` : ''}</td><td class="hide-narrow">${when(j.createdAt)}</td></tr>`;
        })}</tbody></table></div>`,
    );
    $('#refreshed').textContent = `Updated ${new Date().toLocaleTimeString()}`;
  };
  root.addEventListener('click', async (e) => {
    const b = e.target.closest('button[data-retry]');
    if (!b) return;
    b.disabled = true;
    try {
      await api(`/api/onlyfans/messages/failed/${b.dataset.retry}/retry`, { method: 'POST' });
      toast(`Message ${b.dataset.retry} queued again`);
      await load();
    } catch (err) {
      toast(`Retry failed: ${err.message}`);
      b.disabled = false;
    }
  });
  try {
    await load();
  } catch (e) {
    render($('#queue'), errorBox(e));
  }
  return every(3000, load);
}
