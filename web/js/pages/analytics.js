// Analytics: the creator's figures, top fans and revenue per period as SVG bars, campaigns.
import { api, qs } from '../api.js';
import { html, raw, render, esc, cents, num, pct, errorBox, download } from '../ui.js';
import { toCsv } from '../csv.js';
import { go } from '../nav.js';

export async function show(main) {
  const params = new URLSearchParams(location.search);
  const period = params.get('period') || 'day';
  const from = params.get('from') || '';
  const to = params.get('to') || '';
  render(
    main,
    html`<h1>Analytics</h1>
      <form id="range" class="row card">
        <label>Period <select name="period">${['day', 'week', 'month'].map((p) => html`<option ${p === period ? 'selected' : ''}>${p}</option>`)}</select></label>
        <label>From <input type="date" name="from" value="${from}"></label>
        <label>To <input type="date" name="to" value="${to}"></label>
        <button type="submit">Show</button>
        <button type="button" class="secondary" id="export">Export CSV</button>
      </form>
      <div id="analytics"><p class="muted">Loading…</p></div>`,
  );
  main.querySelector('#range').addEventListener('submit', (e) => {
    e.preventDefault();
    const fd = new FormData(e.target);
    go('/app/platforms/onlyfans/analytics' + qs({ period: fd.get('period'), from: fd.get('from'), to: fd.get('to') }));
  });
  const box = main.querySelector('#analytics');
  let a;
  try {
    a = await api('/api/crm/analytics' + qs({ period, from, to }));
  } catch (e) {
    render(box, errorBox(e));
    return;
  }
  render(
    box,
    html`<p class="muted">${a.from} to ${a.to}, by ${a.period}</p>
      <div class="figures">
        <div class="figure"><div class="value" data-figure="totalFans">${num(a.totalFans)}</div><div class="label">fans</div></div>
        <div class="figure"><div class="value" data-figure="activeFans">${num(a.activeFans)}</div><div class="label">active in the last ${a.activeDays} days</div></div>
        <div class="figure"><div class="value" data-figure="lifetimeValueCents">${cents(a.lifetimeValueCents)}</div><div class="label">lifetime value</div></div>
        <div class="figure"><div class="value" data-figure="revenueCents">${cents(a.periods.reduce((s, p) => s + p.revenueCents, 0))}</div><div class="label">revenue in range</div></div>
      </div>
      <div class="grid2">
        <section aria-labelledby="top-h"><h2 id="top-h">Top 10 fans by value</h2>${raw(topChart(a.topFans))}</section>
        <section aria-labelledby="rev-h"><h2 id="rev-h">Revenue per ${a.period}</h2>${raw(revenueChart(a.periods))}</section>
      </div>
      <h2>Campaign performance</h2>
      ${a.campaigns.length
        ? html`<div class="table-wrap"><table><thead><tr><th scope="col">Campaign</th><th scope="col" class="num">Recipients</th><th scope="col" class="num">Sent</th><th scope="col" class="num">Delivered</th><th scope="col" class="num">Opened</th><th scope="col" class="num">Failed</th><th scope="col" class="num">Revenue</th><th scope="col" class="num hide-narrow">Per recipient</th></tr></thead>
          <tbody>${a.campaigns.map(
            (c) => html`<tr><td><a href="/app/campaigns/${c.id}">${c.name}</a></td><td class="num">${num(c.recipients)}</td><td class="num">${num(c.sent)}</td>
              <td class="num">${num(c.delivered)} <span class="muted">${pct(c.deliveredRate)}</span></td><td class="num">${num(c.opened)} <span class="muted">${pct(c.openedRate)}</span></td>
              <td class="num">${num(c.failed)}</td><td class="num">${cents(c.revenueCents)}</td><td class="num hide-narrow">${cents(c.revenuePerRecipientCents)}</td></tr>`,
          )}</tbody></table></div>`
        : html`<p class="muted">No campaigns in this range.</p>`}`,
  );
  main.querySelector('#export').addEventListener('click', () => {
    const rows = [
      ['figure', 'total_fans', a.totalFans],
      ['figure', 'active_fans', a.activeFans],
      ['figure', 'lifetime_value_usd', (a.lifetimeValueCents / 100).toFixed(2)],
      ...a.topFans.map((f, i) => ['top_fan', `${i + 1} ${f.handle}`, (f.valueCents / 100).toFixed(2)]),
      ...a.periods.map((p) => [`${a.period}_revenue_usd`, p.start, (p.revenueCents / 100).toFixed(2)]),
      ...a.periods.map((p) => [`${a.period}_sent`, p.start, p.sent]),
      ...a.campaigns.map((c) => ['campaign_revenue_usd', c.name, (c.revenueCents / 100).toFixed(2)]),
    ];
    download(`analytics-${a.from}-${a.to}.csv`, toCsv(['kind', 'key', 'value'], rows));
  });
}

/** Horizontal bars: one per fan, labelled with handle and value. */
function topChart(fans) {
  if (!fans.length) return '<p class="muted">No fans yet.</p>';
  const max = Math.max(1, ...fans.map((f) => f.valueCents));
  const rowH = 26;
  const w = 520;
  const labelW = 150;
  const h = fans.length * rowH + 8;
  const bars = fans
    .map((f, i) => {
      const bw = Math.max(1, ((w - labelW - 90) * f.valueCents) / max);
      const y = 4 + i * rowH;
      return `<text x="${labelW - 6}" y="${y + 16}" text-anchor="end">${esc(f.handle.slice(0, 20))}</text>
        <rect class="bar" x="${labelW}" y="${y + 3}" width="${bw.toFixed(1)}" height="${rowH - 8}"><title>${esc(f.handle)}: ${esc(cents(f.valueCents))}</title></rect>
        <text x="${(labelW + bw + 6).toFixed(1)}" y="${y + 16}">${esc(cents(f.valueCents))}</text>`;
    })
    .join('');
  return `<svg class="chart" id="top-fans-chart" viewBox="0 0 ${w} ${h}" role="img" aria-label="Top ${fans.length} fans by value">${bars}</svg>`;
}

/** Vertical bars: revenue per period, with the first and last period named. */
function revenueChart(periods) {
  if (!periods.length) return '<p class="muted">No periods.</p>';
  const max = Math.max(1, ...periods.map((p) => p.revenueCents));
  const w = 520;
  const h = 220;
  const left = 60;
  const bottom = 24;
  const slot = (w - left - 4) / periods.length;
  const bars = periods
    .map((p, i) => {
      const bh = ((h - bottom - 10) * p.revenueCents) / max;
      const x = left + i * slot + slot * 0.1;
      return `<rect class="bar" x="${x.toFixed(1)}" y="${(h - bottom - bh).toFixed(1)}" width="${(slot * 0.8).toFixed(1)}" height="${bh.toFixed(1)}"><title>${esc(p.start)}: ${esc(cents(p.revenueCents))}</title></rect>`;
    })
    .join('');
  const axis = `<line x1="${left}" y1="${h - bottom}" x2="${w}" y2="${h - bottom}" stroke="#aab2c0"/>
    <text x="${left - 6}" y="14" text-anchor="end">${esc(cents(max))}</text>
    <text x="${left - 6}" y="${h - bottom}" text-anchor="end">$0</text>
    <text x="${left}" y="${h - 6}">${esc(periods[0].start)}</text>
    <text x="${w - 4}" y="${h - 6}" text-anchor="end">${esc(periods[periods.length - 1].start)}</text>`;
  return `<svg class="chart" id="revenue-chart" viewBox="0 0 ${w} ${h}" role="img" aria-label="Revenue per period, ${periods.length} periods">${axis}${bars}</svg>`;
}
