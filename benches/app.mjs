// The web app's page loads on the embedded default with 10,000 fans (see BENCHMARKS.md).
// Run by benches/app.sh through scripts/browser-test --bench, which starts the server.
// Seeds through the API: a CSV import of 10,000 fans, 20 conversations (one with 100
// messages), a campaign to 100 fans; then loads each page RUNS times in Chromium, from
// navigation to the page's main content on screen, and prints the median and the worst.
import { launch, api, exportCsv, BASE, TOKEN } from '../tests/browser/lib.mjs';

const FANS = Number(process.env.FANS || 10000);
const RUNS = Number(process.env.RUNS || 9);
const OPERATOR_URL = process.env.OPERATOR_URL;

const t0 = Date.now();
const form = new FormData();
form.append('file', new Blob([exportCsv(FANS)], { type: 'text/csv' }), 'fans.csv');
const res = await fetch(`${BASE}/api/onlyfans/import/csv?wait=60`, { method: 'POST', headers: { Authorization: `Bearer ${TOKEN}` }, body: form });
const imported = await res.json();
if (res.status !== 200) throw new Error(`import: ${res.status} ${JSON.stringify(imported)}`);
const fans = await api('/api/crm/fans?limit=100');
const convs = [];
for (const f of fans.items.slice(0, 20)) convs.push(await api('/api/crm/conversations', { method: 'POST', body: { fanId: f.id } }));
for (let i = 0; i < 100; i++) {
  await api(`/api/crm/conversations/${convs[0].id}/inbound`, { method: 'POST', body: { text: `Message ${i} from the fan`, externalId: `bench-${i}` } });
}
for (const c of convs.slice(1)) await api(`/api/crm/conversations/${c.id}/inbound`, { method: 'POST', body: { text: 'hi!', externalId: `bench-c${c.id}` } });
for (const tag of ['VIP', 'Basic']) {
  await api('/api/crm/segments', { method: 'POST', body: { name: tag, filter: { tagsAny: [tag], inactiveDays: 7 } } });
}
const campaign = await api('/api/messages/bulk', { method: 'POST', body: { recipientIds: fans.items.map((f) => f.id), content: 'Offer', campaignName: 'Bench' } });
console.log(`seeded ${imported.summary.successfulInserts} fans, 20 conversations, 120 messages, 2 segments, a campaign to 100 fans in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

const pages = [
  ['conversations', '/app/messages/onlyfans', '.convs a'],
  ['thread (100 messages)', `/app/messages/onlyfans/${convs[0].id}`, 'li.msg'],
  ['fans (10,000)', '/app/fans', '#fan-count'],
  ['fans, tag filter', '/app/fans?tag=VIP', '#fan-count'],
  ['fan', `/app/fans/${fans.items[0].id}`, '#fan-form'],
  ['imports', '/app/imports', '#recent table'],
  ['segments (2, counts of 10,000 fans)', '/app/segments', '#segments table'],
  ['campaigns', '/app/campaigns', '#campaigns table'],
  ['campaign (100 recipients)', `/app/campaigns/${campaign.campaignId}`, 'tr[data-recipient]'],
  ['analytics', '/app/platforms/onlyfans/analytics', '#revenue-chart'],
  ['operator', '/app/operator', '[data-health="overall"]'],
];

const browser = await launch();
const page = await (await browser.newContext({ viewport: { width: 1280, height: 800 } })).newPage();
const errors = [];
page.on('pageerror', (e) => errors.push(e.message));
await page.goto(OPERATOR_URL);
await page.locator('#nav').waitFor();
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const rows = [];
for (const [name, path, ready] of pages) {
  const times = [];
  for (let i = 0; i < RUNS + 1; i++) {
    const start = performance.now();
    await page.goto(BASE + path);
    await page.locator(ready).first().waitFor();
    if (i > 0) times.push(performance.now() - start); // the first run warms up
  }
  rows.push([name, median(times), Math.max(...times)]);
}
// In-app navigation: a click on the navigation, no page load.
const clicks = [];
for (let i = 0; i < RUNS; i++) {
  await page.goto(BASE + '/app/imports');
  await page.locator('#recent table').waitFor();
  const start = performance.now();
  await page.locator('#nav').getByRole('link', { name: 'Fans', exact: true }).click();
  await page.locator('#fan-count').waitFor();
  clicks.push(performance.now() - start);
}
rows.push(['fans (10,000), from the navigation', median(clicks), Math.max(...clicks)]);
await browser.close();

console.log(`\npage load to main content, ${RUNS} runs each (Chromium headless, ${FANS} fans)`);
console.log('| page | median ms | worst ms |\n|---|---:|---:|');
for (const [name, med, max] of rows) console.log(`| ${name} | ${med.toFixed(0)} | ${max.toFixed(0)} |`);
const slow = rows.filter(([, med]) => med >= 300);
console.log(slow.length ? `\n${slow.length} page(s) at or over 300 ms (median)` : '\nevery page under 300 ms (median)');
if (errors.length) console.log(`page errors: ${errors.join('; ')}`);
