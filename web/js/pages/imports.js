// CSV imports: upload, the job's progress, the summary with errors by row, recent imports.
import { api, qs } from '../api.js';
import { html, render, when, num, errorBox } from '../ui.js';

export async function show(main) {
  render(
    main,
    html`<h1>Import fans</h1>
      <form id="import-form" class="stack card">
        <label>CSV export from the platform <input type="file" name="file" id="csv-file" accept=".csv,text/csv" required></label>
        <div><button type="submit">Import</button></div>
      </form>
      <section id="progress" aria-live="polite"></section>
      <h2>Recent imports</h2>
      <div id="recent"><p class="muted">Loading…</p></div>`,
  );
  let stopped = false;
  const recent = main.querySelector('#recent');
  const loadRecent = async () => {
    try {
      const jobs = await api('/api/jobs' + qs({ kind: 'import_csv', limit: 10 }));
      render(
        recent,
        jobs.items.length
          ? html`<div class="table-wrap"><table><thead><tr><th scope="col">Started</th><th scope="col">Status</th><th scope="col" class="num">Rows</th><th scope="col" class="num">New</th><th scope="col" class="num">Updated</th><th scope="col" class="num">Errors</th></tr></thead>
            <tbody>${jobs.items.map((j) => {
              const s = j.result?.summary;
              return html`<tr><td>${when(j.createdAt)}</td><td>${j.status}</td><td class="num">${s ? num(s.totalRows) : `${num(j.progress?.done)}/${num(j.progress?.total)}`}</td>
                <td class="num">${s ? num(s.successfulInserts) : ''}</td><td class="num">${s ? num(s.updated) : ''}</td><td class="num">${s ? num(s.errorCount) : ''}</td></tr>`;
            })}</tbody></table></div>`
          : html`<p class="muted">No imports yet.</p>`,
      );
    } catch (e) {
      render(recent, errorBox(e));
    }
  };
  loadRecent();

  const form = main.querySelector('#import-form');
  const out = main.querySelector('#progress');
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const button = form.querySelector('button');
    button.disabled = true;
    try {
      const started = await api('/api/onlyfans/import/csv', { method: 'POST', form: new FormData(form) });
      let job;
      for (;;) {
        job = await api(`/api/jobs/${started.jobId}`);
        const { done = 0, total = 0 } = job.progress || {};
        render(
          out,
          html`<div class="card"><label>Import ${job.status}: ${num(done)} of ${total ? num(total) : '?'} rows
            <progress id="import-progress" max="${total || 1}" value="${done}"></progress></label></div>`,
        );
        if (['succeeded', 'failed', 'cancelled', 'dead'].includes(job.status) || stopped) break;
        await new Promise((r) => setTimeout(r, 500));
      }
      render(out, summary(job));
      form.reset();
      loadRecent();
    } catch (err) {
      render(out, errorBox(err));
    } finally {
      button.disabled = false;
    }
  });
  return () => {
    stopped = true;
  };
}

function summary(job) {
  const s = job.result?.summary;
  if (!s) return html`<div class="card" id="import-summary"><p class="error">Import ${job.status}: ${job.error || 'no summary'}</p></div>`;
  return html`<div class="card" id="import-summary">
    <h2 class="mt0">Import ${job.status}</h2>
    <div class="figures">
      <div class="figure"><div class="value" data-figure="totalRows">${num(s.totalRows)}</div><div class="label">rows</div></div>
      <div class="figure"><div class="value" data-figure="successfulInserts">${num(s.successfulInserts)}</div><div class="label">new fans</div></div>
      <div class="figure"><div class="value" data-figure="updated">${num(s.updated)}</div><div class="label">updated</div></div>
      <div class="figure"><div class="value" data-figure="unchanged">${num(s.unchanged ?? 0)}</div><div class="label">unchanged</div></div>
      <div class="figure"><div class="value" data-figure="skipped">${num(s.skipped)}</div><div class="label">skipped</div></div>
      <div class="figure"><div class="value" data-figure="errorCount">${num(s.errorCount)}</div><div class="label">errors</div></div>
    </div>
    ${s.errors.length
      ? html`<h3>Errors by row</h3><div class="table-wrap"><table><thead><tr><th scope="col" class="num">Row</th><th scope="col">Error</th></tr></thead>
        <tbody>${s.errors.map((r) => html`<tr><td class="num">${r.row}</td><td>${r.error}</td></tr>`)}</tbody></table></div>
        ${s.errorsOmitted ? html`<p class="muted">and ${num(s.errorsOmitted)} more</p>` : ''}`
      : ''}
    ${s.cancelled ? html`<p>Cancelled at row ${s.stoppedAtRow}.</p>` : ''}
    <p><a href="/app/fans">See the fans</a></p>
  </div>`;
}
