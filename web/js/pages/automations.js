// Automations: the list with live figures and pause/resume; a builder (trigger, steps, rules)
// that creates or edits one; an automation's funnel per step, its variants side by side and its
// enrollments; and a fan's timeline of what the automations did to them (on the fan's page).
import { api, qs } from '../api.js';
import { html, raw, render, update, when, num, cents, pct, errorBox, toast, every } from '../ui.js';
import { describe } from './segments.js';
import { go } from '../nav.js';

// The trigger types, in the order of the select, with their words.
const TRIGGERS = [
  ['subscription', 'New subscription'],
  ['resubscription', 'Resubscription'],
  ['subscription_expiring', 'Subscription ending soon'],
  ['subscription_expired', 'Subscription expired'],
  ['purchased', 'Purchase'],
  ['tip', 'Tip'],
  ['inbound', 'Message from the fan'],
  ['fan_created', 'Fan created'],
  ['inactive', 'Fan inactive'],
];
const TRIGGER_WORDS = Object.fromEntries(TRIGGERS);

/** Words for a trigger. */
function triggerText(t) {
  const base = TRIGGER_WORDS[t.type] ?? t.type;
  if (t.type === 'subscription_expiring') return `${base} (${t.daysBefore} days before)`;
  if (t.type === 'inactive') return `${base} for ${t.days} days`;
  if (t.type === 'inbound' && t.keyword) return `${base} containing “${t.keyword}”`;
  if (t.type === 'purchased') {
    const of = [t.messageId ? `message ${t.messageId}` : '', t.campaignId ? `campaign ${t.campaignId}` : ''].filter(Boolean);
    return of.length ? `${base} of ${of.join(', ')}` : base;
  }
  return base;
}

const UNITS = [
  ['seconds', 1],
  ['minutes', 60],
  ['hours', 3600],
  ['days', 86400],
];

/** "3 s", "5 min", "2 h", "1 day". */
function duration(s) {
  if (s % 86400 === 0 && s) return `${s / 86400} day${s === 86400 ? '' : 's'}`;
  if (s % 3600 === 0 && s) return `${s / 3600} h`;
  if (s % 60 === 0 && s) return `${s / 60} min`;
  return `${s} s`;
}

/** The largest unit that divides all of `seconds` evenly. */
function unitOf(...seconds) {
  for (const [unit, n] of [...UNITS].reverse()) {
    if (seconds.every((s) => s % n === 0)) return [unit, n];
  }
  return UNITS[0];
}

/** Words for a step as stored. */
function stepText(s) {
  if (s.wait) {
    const w = s.wait;
    return w.seconds != null ? `Wait ${duration(w.seconds)}` : `Wait ${duration(w.minSeconds)} to ${duration(w.maxSeconds)}`;
  }
  if (s.send) {
    const v = s.send.variants;
    const price = s.send.priceCents ? ` (${cents(s.send.priceCents)})` : '';
    return v?.length ? `Send one of ${v.length} variants: ${v.map((x) => x.name).join(', ')}` : `Send “${clip(s.send.content)}”${price}`;
  }
  if (s.condition) return `If ${describe(s.condition.filter)}, else ${s.condition.else === 'exit' ? 'exit' : 'skip the next step'}`;
  return 'Exit';
}

function clip(s, n = 60) {
  return s.length > n ? s.slice(0, n - 1) + '…' : s;
}

function kindOf(s) {
  return Object.keys(s)[0];
}

function statusBadge(a) {
  return html`<span class="badge status-${a.status}" data-status>${a.status}</span>`;
}

/** Pause or resume, for what the automation may do now. */
function controls(a) {
  const what = a.status === 'active' ? 'pause' : 'resume';
  const label = what === 'pause' ? 'Pause' : 'Resume';
  return html`<button type="button" class="secondary small" id="control-${a.id}" data-control="${what}" data-id="${a.id}" aria-label="${label} ${a.name}">${label}</button>`;
}

/** A click on a `controls` button: asks the server, then reloads. */
async function control(e, reload) {
  const b = e.target.closest('button[data-control]');
  if (!b) return false;
  b.disabled = true;
  try {
    const a = await api(`/api/crm/automations/${b.dataset.id}/${b.dataset.control}`, { method: 'POST' });
    toast(`Automation ${a.status === 'active' ? 'resumed' : 'paused'}`);
    await reload();
  } catch (err) {
    toast(`Not done: ${err.message}`);
    b.disabled = false;
  }
  return true;
}

export async function showList(main) {
  render(
    main,
    html`<h1>Automations</h1>
      <p class="row"><a class="button" href="/app/automations/new" id="new-automation">New automation</a></p>
      <div id="automations"><p class="muted">Loading…</p></div>`,
  );
  const box = main.querySelector('#automations');
  const load = async () => {
    const page = await api('/api/crm/automations' + qs({ limit: 50 }));
    const focused = document.activeElement?.id;
    update(
      box,
      page.items.length
        ? html`<div class="table-wrap"><table>
          <thead><tr><th scope="col">Automation</th><th scope="col" class="hide-narrow">Trigger</th><th scope="col">Status</th><th scope="col" class="num">Enrolled</th><th scope="col" class="num hide-narrow">Active</th><th scope="col" class="num hide-narrow">Sent</th><th scope="col" class="num">Revenue</th></tr></thead>
          <tbody>${page.items.map(
            (a) => html`<tr data-automation="${a.id}"><td><a href="/app/automations/${a.id}">${a.name}</a><div class="muted">${a.steps.length} step${a.steps.length === 1 ? '' : 's'} · v${a.version}</div></td>
              <td class="hide-narrow">${triggerText(a.trigger)}</td>
              <td>${statusBadge(a)} ${controls(a)}</td>
              <td class="num" data-metric="enrolled">${num(a.metrics.enrolled)}</td><td class="num hide-narrow" data-metric="active">${num(a.metrics.active)}</td>
              <td class="num hide-narrow" data-metric="sent">${num(a.metrics.sent)}</td><td class="num" data-metric="revenue">${cents(a.metrics.revenueCents)}</td></tr>`,
          )}</tbody></table></div>
          ${page.total > page.items.length ? html`<p class="muted">The newest ${page.items.length} of ${page.total}.</p>` : ''}`
        : html`<p class="muted" id="no-automations">No automations yet: a welcome message to new subscribers is a good first one.</p>`,
    );
    if (focused) document.getElementById(focused)?.focus();
  };
  box.addEventListener('click', (e) => control(e, load));
  try {
    await load();
  } catch (e) {
    render(box, errorBox(e));
    return;
  }
  return every(3000, load);
}

// ---------------------------------------------------------------------------------------------
// The builder.

export async function showNew(main) {
  return builder(main, null);
}

export async function showEdit(main, { id }) {
  render(main, html`<p class="muted">Loading…</p>`);
  let a;
  try {
    a = await api(`/api/crm/automations/${id}`);
  } catch (e) {
    render(main, html`<p><a href="/app/automations">← Automations</a></p><h1>Edit automation</h1>${errorBox(e)}`);
    return;
  }
  return builder(main, a);
}

const usd = (c) => (c == null ? '' : (c / 100).toFixed(2));

function unitSelect(label, unit) {
  return html`<label>${label} <select data-field="unit">${UNITS.map(([u]) => html`<option ${u === unit ? 'selected' : ''}>${u}</option>`)}</select></label>`;
}

/** A step's fields, filled in from `s` (a stored step) or empty. */
function stepItem(kind, s = {}) {
  let body;
  if (kind === 'wait') {
    const w = s.wait ?? { seconds: 60 };
    const [unit, n] = w.seconds != null ? unitOf(w.seconds) : unitOf(w.minSeconds, w.maxSeconds);
    const value = w.seconds != null ? w.seconds / n : w.minSeconds / n;
    const max = w.maxSeconds != null ? w.maxSeconds / n : '';
    body = html`<div class="row">
      <label>Wait <input type="number" data-field="amount" min="0" step="1" size="6" value="${value}"></label>
      ${unitSelect('Unit', unit)}
      <label>Up to (random, optional) <input type="number" data-field="max" min="0" step="1" size="6" value="${max}"></label>
    </div>`;
  } else if (kind === 'send') {
    const m = s.send ?? { content: '' };
    body = html`<label>Message <textarea data-field="content" maxlength="5000">${m.content}</textarea></label>
      <div class="row">
        <label>Price (USD) <input type="number" data-field="price" min="0" step="0.01" size="8" value="${usd(m.priceCents)}"></label>
        <label class="grow">Media URLs (one a line) <textarea data-field="media" rows="1">${(m.mediaUrls ?? []).join('\n')}</textarea></label>
      </div>
      <p class="muted small" data-variants-hint ${m.variants?.length ? '' : 'hidden'}>With variants, each enrollment gets one of them by weight (the same one each time); the message above is kept as the fallback.</p>
      <div class="variants" data-variants>${(m.variants ?? []).map((v) => variantItem(v))}</div>
      <div><button type="button" class="secondary small" data-add-variant>Add variant</button></div>`;
  } else if (kind === 'condition') {
    const c = s.condition ?? { filter: {}, else: 'exit' };
    body = html`<label>Filter the fan must match (JSON, as a segment's) <textarea data-field="filter" spellcheck="false" class="mono">${JSON.stringify(c.filter ?? {}, null, 1)}</textarea></label>
      <p class="muted small" data-filter-words>${describe(c.filter ?? {})}</p>
      <div class="row">
        <label>Copy a segment's filter <select data-field="copy" data-segments><option value="">choose a segment</option></select></label>
        <label>Otherwise <select data-field="else"><option value="exit" ${c.else === 'exit' ? 'selected' : ''}>end the enrollment</option><option value="continue" ${c.else === 'continue' ? 'selected' : ''}>skip the next step and go on</option></select></label>
      </div>`;
  } else {
    body = html`<p class="muted mt0">The enrollment ends here.</p>`;
  }
  const title = { wait: 'Wait', send: 'Send a message', condition: 'Condition', exit: 'Exit' }[kind];
  return html`<li class="step" data-step data-kind="${kind}">
    <fieldset>
      <legend><span data-num></span> · ${title}</legend>
      ${body}
      <div class="row step-tools">
        <button type="button" class="secondary small" data-move="up">Move up</button>
        <button type="button" class="secondary small" data-move="down">Move down</button>
        <button type="button" class="secondary small" data-remove-step>Remove</button>
      </div>
    </fieldset>
  </li>`;
}

function variantItem(v = {}) {
  return html`<fieldset class="variant" data-variant>
    <legend data-variant-num>Variant</legend>
    <div class="row">
      <label>Variant name <input data-field="name" maxlength="50" size="8" value="${v.name ?? ''}"></label>
      <label>Weight <input type="number" data-field="weight" min="0" max="1000" step="1" size="4" value="${v.weight ?? 1}"></label>
      <label>Variant price (USD) <input type="number" data-field="price" min="0" step="0.01" size="8" value="${usd(v.priceCents)}"></label>
    </div>
    <label>Variant message <textarea data-field="content" maxlength="5000">${v.content ?? ''}</textarea></label>
    <div><button type="button" class="secondary small" data-remove-variant>Remove variant</button></div>
  </fieldset>`;
}

/** A problem with what the form says: `el` is the field to fix. */
class Invalid extends Error {
  constructor(message, el) {
    super(message);
    this.el = el;
  }
}

async function builder(main, a) {
  const editing = !!a;
  const t = a?.trigger ?? { type: 'subscription' };
  const q = a?.quietHours;
  const here = Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
  const zones = typeof Intl.supportedValuesOf === 'function' ? Intl.supportedValuesOf('timeZone') : [];
  render(
    main,
    html`<p><a href="${editing ? `/app/automations/${a.id}` : '/app/automations'}">← ${editing ? a.name : 'Automations'}</a></p>
      <h1>${editing ? 'Edit automation' : 'New automation'}</h1>
      ${editing ? html`<p class="muted">Saving a new trigger or steps stores version ${a.version + 1}: fans enrolled already keep version ${a.version}.</p>` : ''}
      <form id="automation-form" class="stack" novalidate>
        <div class="card stack">
          <label>Automation name <input name="name" id="automation-name" maxlength="200" value="${a?.name ?? ''}" autocomplete="off"></label>
        </div>
        <fieldset class="card">
          <legend>Trigger</legend>
          <div class="row">
            <label>Starts when <select name="triggerType" id="trigger-type">${TRIGGERS.map(
              ([v, words]) => html`<option value="${v}" ${v === t.type ? 'selected' : ''}>${words}</option>`,
            )}</select></label>
            <label data-param="subscription_expiring">Days before the end <input type="number" name="daysBefore" min="1" max="3650" size="5" value="${t.daysBefore ?? 3}"></label>
            <label data-param="purchased">Of the campaign (optional) <select name="campaignId" id="trigger-campaign"><option value="">any campaign</option>${t.campaignId ? html`<option value="${t.campaignId}" selected>campaign ${t.campaignId}</option>` : ''}</select></label>
            <label data-param="purchased">Of the message id (optional) <input type="number" name="messageId" min="1" size="8" value="${t.messageId ?? ''}"></label>
            <label data-param="inbound">Containing (optional) <input name="keyword" maxlength="100" value="${t.keyword ?? ''}"></label>
            <label data-param="inactive">Not seen for (days) <input type="number" name="days" min="1" max="3650" size="5" value="${t.days ?? 30}"></label>
          </div>
          <p class="muted small mt0" id="trigger-help"></p>
        </fieldset>
        <fieldset class="card">
          <legend>Steps</legend>
          <p class="muted mt0" id="no-steps">No steps yet: add one below.</p>
          <ol class="steps" id="steps">${(a?.steps ?? []).map((s) => stepItem(kindOf(s), s))}</ol>
          <div class="row" role="group" aria-label="Add a step">
            <button type="button" class="secondary" data-add="wait">Add wait</button>
            <button type="button" class="secondary" data-add="send">Add send</button>
            <button type="button" class="secondary" data-add="condition">Add condition</button>
            <button type="button" class="secondary" data-add="exit">Add exit</button>
          </div>
        </fieldset>
        <fieldset class="card">
          <legend>Rules</legend>
          <div class="row">
            <label class="inline"><input type="checkbox" name="stopOnReply" ${a?.stopOnReply ? 'checked' : ''}> Stop when the fan writes in</label>
            <label class="inline"><input type="checkbox" name="oncePerFan" ${a?.oncePerFan ? 'checked' : ''}> Enroll a fan once, ever</label>
            <label>Cooldown (hours, optional) <input type="number" name="cooldownHours" min="1" max="87600" size="6" value="${a?.cooldownHours ?? ''}"></label>
          </div>
          <div class="row spaced">
            <label>Quiet hours from <input type="time" name="quietFrom" value="${q?.from ?? ''}"></label>
            <label>until <input type="time" name="quietTo" value="${q?.to ?? ''}"></label>
            <label>Time zone <input name="timezone" list="timezones" size="16" value="${q?.timezone ?? here}" autocomplete="off"></label>
            <datalist id="timezones">${zones.map((z) => html`<option value="${z}">`)}</datalist>
          </div>
          <div class="row">
            <label>Audience <select name="audience" id="audience-pick">
              <option value="">every fan</option>
              ${a?.audience?.filter ? html`<option value="filter" selected>its own filter: ${describe(a.audience.filter)}</option>` : ''}
              ${a?.audience?.segmentId ? html`<option value="${a.audience.segmentId}" selected>segment ${a.audience.segmentId}</option>` : ''}
            </select></label>
          </div>
        </fieldset>
        <div id="builder-error" role="alert" aria-live="assertive"></div>
        <div class="row"><button type="submit" id="save-automation">${editing ? 'Save changes' : 'Create automation'}</button>
          <a class="button secondary" href="${editing ? `/app/automations/${a.id}` : '/app/automations'}">Cancel</a></div>
      </form>`,
  );
  const form = main.querySelector('#automation-form');
  const list = form.querySelector('#steps');
  const errorEl = form.querySelector('#builder-error');
  const triggerType = form.querySelector('#trigger-type');
  const help = {
    subscription: 'A fan with no subscription on record subscribes.',
    resubscription: 'A fan whose subscription had expired subscribes again.',
    subscription_expiring: 'Checked daily: a subscription with renewal off ends within these days.',
    subscription_expired: 'A subscription expires.',
    purchased: 'A fan unlocks a paid message (of this campaign or message, when given).',
    tip: 'A fan tips.',
    inbound: 'A fan writes in (containing these words, without case, when given).',
    fan_created: 'A fan is created through the API.',
    inactive: 'Checked daily: a fan not seen for these days, once per spell.',
  };
  const showParams = () => {
    for (const l of form.querySelectorAll('[data-param]')) l.hidden = l.dataset.param !== triggerType.value;
    form.querySelector('#trigger-help').textContent = help[triggerType.value] ?? '';
  };
  triggerType.addEventListener('change', showParams);
  showParams();

  // Segments for the audience and the conditions' "copy a segment's filter"; campaigns for a
  // purchase trigger.
  let segments = [];
  const fillSegments = (root) => {
    for (const sel of root.querySelectorAll('select[data-segments]')) {
      if (sel.options.length > 1) continue;
      sel.insertAdjacentHTML('beforeend', segments.map((s) => html`<option value="${s.id}">${s.name}</option>`).join(''));
    }
  };
  api('/api/crm/segments' + qs({ limit: 200 }))
    .then((page) => {
      segments = page.items;
      const pick = form.querySelector('#audience-pick');
      const chosen = a?.audience?.segmentId;
      if (chosen) pick.querySelector(`option[value="${chosen}"]`)?.remove();
      pick.insertAdjacentHTML(
        'beforeend',
        segments.map((s) => html`<option value="${s.id}" ${s.id === chosen ? 'selected' : ''}>${s.name}</option>`).join(''),
      );
      fillSegments(form);
    })
    .catch((err) => toast(`Segments not loaded: ${err.message}`));
  api('/api/crm/campaigns' + qs({ limit: 200 }))
    .then((page) => {
      const pick = form.querySelector('#trigger-campaign');
      const chosen = t.campaignId;
      if (chosen) pick.querySelector(`option[value="${chosen}"]`)?.remove();
      pick.insertAdjacentHTML(
        'beforeend',
        page.items.map((c) => html`<option value="${c.id}" ${c.id === chosen ? 'selected' : ''}>${c.name}</option>`).join(''),
      );
    })
    .catch((err) => toast(`Campaigns not loaded: ${err.message}`));

  // Step numbers, and the names of the buttons that say which step they act on.
  const renumber = () => {
    const items = [...list.children];
    form.querySelector('#no-steps').hidden = items.length > 0;
    items.forEach((li, i) => {
      const n = i + 1;
      li.querySelector('[data-num]').textContent = `Step ${n}`;
      li.dataset.index = i;
      const up = li.querySelector('[data-move="up"]');
      const down = li.querySelector('[data-move="down"]');
      up.setAttribute('aria-label', `Move step ${n} up`);
      down.setAttribute('aria-label', `Move step ${n} down`);
      up.disabled = i === 0;
      down.disabled = i === items.length - 1;
      li.querySelector('[data-remove-step]').setAttribute('aria-label', `Remove step ${n}`);
      const add = li.querySelector('[data-add-variant]');
      if (add) add.setAttribute('aria-label', `Add a variant to step ${n}`);
      li.querySelectorAll('[data-variant]').forEach((v, j) => {
        v.querySelector('[data-variant-num]').textContent = `Variant ${j + 1}`;
        v.querySelector('[data-remove-variant]').setAttribute('aria-label', `Remove variant ${j + 1} of step ${n}`);
      });
      const hint = li.querySelector('[data-variants-hint]');
      if (hint) hint.hidden = !li.querySelector('[data-variant]');
    });
  };
  renumber();
  fillSegments(form);

  form.addEventListener('click', (e) => {
    const b = e.target.closest('button');
    if (!b || b.type === 'submit') return;
    const li = b.closest('[data-step]');
    if (b.dataset.add) {
      list.insertAdjacentHTML('beforeend', String(stepItem(b.dataset.add)));
      const added = list.lastElementChild;
      fillSegments(added);
      renumber();
      added.querySelector('input, textarea, select, button')?.focus();
    } else if (b.dataset.move) {
      const other = b.dataset.move === 'up' ? li.previousElementSibling : li.nextElementSibling;
      if (!other) return;
      if (b.dataset.move === 'up') list.insertBefore(li, other);
      else list.insertBefore(other, li);
      renumber();
      (b.disabled ? li.querySelector(`[data-move="${b.dataset.move === 'up' ? 'down' : 'up'}"]`) : b).focus();
    } else if (b.hasAttribute('data-remove-step')) {
      const next = li.nextElementSibling ?? li.previousElementSibling;
      li.remove();
      renumber();
      (next?.querySelector('[data-remove-step]') ?? form.querySelector('[data-add="wait"]')).focus();
    } else if (b.hasAttribute('data-add-variant')) {
      const box = li.querySelector('[data-variants]');
      const n = box.children.length;
      box.insertAdjacentHTML('beforeend', String(variantItem({ name: String.fromCharCode(65 + (n % 26)), weight: 1 })));
      renumber();
      box.lastElementChild.querySelector('[data-field="content"]').focus();
    } else if (b.hasAttribute('data-remove-variant')) {
      b.closest('[data-variant]').remove();
      renumber();
      li.querySelector('[data-add-variant]').focus();
    }
  });
  // A condition's filter: its words as it is typed, a segment's copied in.
  form.addEventListener('input', (e) => {
    const el = e.target;
    el.removeAttribute('aria-invalid');
    if (el.dataset.field !== 'filter') return;
    const words = el.closest('[data-step]').querySelector('[data-filter-words]');
    try {
      const f = JSON.parse(el.value || '{}');
      words.textContent = f && typeof f === 'object' && !Array.isArray(f) ? describe(f) : 'not a filter: give an object';
    } catch {
      words.textContent = 'not JSON yet';
    }
  });
  form.addEventListener('change', (e) => {
    const el = e.target;
    if (el.dataset.field !== 'copy' || !el.value) return;
    const seg = segments.find((s) => String(s.id) === el.value);
    const li = el.closest('[data-step]');
    const area = li.querySelector('[data-field="filter"]');
    area.value = JSON.stringify(seg?.filter ?? {}, null, 1);
    area.dispatchEvent(new Event('input', { bubbles: true }));
    el.value = '';
  });

  const showError = (message, el) => {
    render(errorEl, html`<p class="error">${message}</p>`);
    for (const x of form.querySelectorAll('[aria-invalid]')) x.removeAttribute('aria-invalid');
    if (el) {
      el.setAttribute('aria-invalid', 'true');
      el.setAttribute('aria-describedby', 'builder-error');
      el.focus();
    } else {
      errorEl.scrollIntoView({ block: 'nearest' });
    }
  };

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    render(errorEl, '');
    let body;
    try {
      body = definitionOf(form, a);
    } catch (err) {
      if (!(err instanceof Invalid)) throw err;
      showError(err.message, err.el);
      return;
    }
    const button = form.querySelector('#save-automation');
    button.disabled = true;
    try {
      const saved = editing
        ? await api(`/api/crm/automations/${a.id}`, { method: 'PUT', body })
        : await api('/api/crm/automations', { method: 'POST', body });
      toast(editing ? `Saved: version ${saved.version}` : `Automation “${saved.name}” created and active`);
      go(`/app/automations/${saved.id}`);
    } catch (err) {
      showError(serverProblem(err), fieldElement(form, err));
      button.disabled = false;
    }
  });
}

/** The API's error in the builder's words: `steps[1].send.content` becomes "Step 2". */
function serverProblem(err) {
  const m = /^`?steps\[(\d+)\]/.exec(err.field ?? err.message.replace(/^`/, ''));
  const where = m ? `Step ${Number(m[1]) + 1}: ` : '';
  return `Not saved${err.status ? ` (${err.status})` : ''}: ${where}${err.message}`;
}

/** The form field an API error names, when the builder has it. */
function fieldElement(form, err) {
  const field = err.field ?? /^`([^`]+)`/.exec(err.message)?.[1];
  if (!field) return null;
  const byName = {
    name: '#automation-name',
    'trigger.daysBefore': '[name="daysBefore"]',
    'trigger.days': '[name="days"]',
    'trigger.keyword': '[name="keyword"]',
    'trigger.messageId': '[name="messageId"]',
    'trigger.campaignId': '[name="campaignId"]',
    cooldownHours: '[name="cooldownHours"]',
    quietHours: '[name="timezone"]',
    audience: '#audience-pick',
  };
  if (byName[field]) return form.querySelector(byName[field]);
  const m = /^steps\[(\d+)\]\.(\w+)(?:\.(\w+))?/.exec(field);
  if (!m) return null;
  const li = form.querySelectorAll('[data-step]')[Number(m[1])];
  if (!li) return null;
  const inner = { content: 'content', priceCents: 'price', mediaUrls: 'media', seconds: 'amount', filter: 'filter' }[m[3]];
  return (inner && li.querySelector(`[data-field="${inner}"]`)) || li.querySelector('input, textarea, select');
}

/** The request body the builder's form says, or an Invalid naming the field to fix. */
function definitionOf(form, a) {
  const fd = new FormData(form);
  const field = (name) => form.querySelector(`[name="${name}"]`);
  const name = fd.get('name').trim();
  if (!name) throw new Invalid('Give the automation a name.', field('name'));
  const intIn = (el, lo, hi, what) => {
    const v = Number(el.value);
    if (el.value === '' || !Number.isInteger(v) || v < lo || v > hi) throw new Invalid(`${what} must be a whole number from ${lo} to ${hi}.`, el);
    return v;
  };
  const cents = (el, what) => {
    if (el.value === '') return undefined;
    const v = Number(el.value);
    if (!Number.isFinite(v) || v < 0) throw new Invalid(`${what} must be an amount of 0 or more.`, el);
    return Math.round(v * 100);
  };

  const type = fd.get('triggerType');
  const trigger = { type };
  if (type === 'subscription_expiring') trigger.daysBefore = intIn(field('daysBefore'), 1, 3650, 'Days before the end');
  if (type === 'inactive') trigger.days = intIn(field('days'), 1, 3650, 'Not seen for (days)');
  if (type === 'inbound' && fd.get('keyword').trim()) trigger.keyword = fd.get('keyword').trim();
  if (type === 'purchased') {
    if (fd.get('campaignId')) trigger.campaignId = Number(fd.get('campaignId'));
    if (fd.get('messageId')) trigger.messageId = intIn(field('messageId'), 1, Number.MAX_SAFE_INTEGER, 'The message id');
  }

  const items = [...form.querySelectorAll('[data-step]')];
  if (!items.length) throw new Invalid('Add at least one step: a wait, a send, a condition or an exit.', form.querySelector('[data-add="send"]'));
  const steps = items.map((li, i) => {
    const n = i + 1;
    const f = (name, root = li) => root.querySelector(`[data-field="${name}"]`);
    switch (li.dataset.kind) {
      case 'wait': {
        const unit = Object.fromEntries(UNITS)[f('unit').value];
        const max = 31622400 / unit;
        const amount = intIn(f('amount'), 0, Math.floor(max), `Step ${n}: the wait`);
        if (f('max').value === '') return { wait: { seconds: amount * unit } };
        const upTo = intIn(f('max'), amount, Math.floor(max), `Step ${n}: “up to”`);
        return { wait: { minSeconds: amount * unit, maxSeconds: upTo * unit } };
      }
      case 'send': {
        const variants = [...li.querySelectorAll('[data-variant]')].map((v, j) => {
          const vname = f('name', v).value.trim();
          if (!vname) throw new Invalid(`Step ${n}, variant ${j + 1}: give it a name.`, f('name', v));
          const content = f('content', v).value;
          if (!content.trim()) throw new Invalid(`Step ${n}, variant ${vname}: the message is empty.`, f('content', v));
          const out = { name: vname, weight: intIn(f('weight', v), 0, 1000, `Step ${n}, variant ${vname}: the weight`), content };
          const price = cents(f('price', v), `Step ${n}, variant ${vname}: the price`);
          if (price !== undefined) out.priceCents = price;
          return out;
        });
        if (variants.length) {
          const seen = new Set();
          for (const [j, v] of variants.entries()) {
            if (seen.has(v.name)) throw new Invalid(`Step ${n}: two variants are named “${v.name}”.`, f('name', li.querySelectorAll('[data-variant]')[j]));
            seen.add(v.name);
          }
          if (variants.every((v) => v.weight === 0)) throw new Invalid(`Step ${n}: give a variant a weight above 0.`, f('weight', li.querySelector('[data-variant]')));
        }
        // With variants the step's own message is a fallback: the first variant's when empty.
        const content = f('content').value.trim() ? f('content').value : variants[0]?.content ?? '';
        if (!content.trim()) throw new Invalid(`Step ${n}: the message is empty. Write what to send.`, f('content'));
        const send = { content };
        const price = cents(f('price'), `Step ${n}: the price`);
        if (price !== undefined) send.priceCents = price;
        const media = f('media').value.split('\n').map((u) => u.trim()).filter(Boolean);
        if (media.length) send.mediaUrls = media;
        if (variants.length) send.variants = variants;
        return { send };
      }
      case 'condition': {
        let filter;
        try {
          filter = JSON.parse(f('filter').value.trim() || '{}');
        } catch (err) {
          throw new Invalid(`Step ${n}: the filter is not JSON (${err.message}).`, f('filter'));
        }
        if (!filter || typeof filter !== 'object' || Array.isArray(filter)) throw new Invalid(`Step ${n}: the filter must be an object, such as {"tagsAny": ["vip"]}.`, f('filter'));
        return { condition: { filter, else: f('else').value } };
      }
      default:
        return { exit: {} };
    }
  });

  const body = { name, trigger, steps, stopOnReply: !!fd.get('stopOnReply'), oncePerFan: !!fd.get('oncePerFan') };
  if (fd.get('cooldownHours') !== '') body.cooldownHours = intIn(field('cooldownHours'), 1, 87600, 'The cooldown (hours)');
  const from = fd.get('quietFrom');
  const to = fd.get('quietTo');
  if (from || to) {
    if (!from || !to) throw new Invalid('Quiet hours need both a start and an end.', field(from ? 'quietTo' : 'quietFrom'));
    const timezone = fd.get('timezone').trim();
    if (!timezone) throw new Invalid('Quiet hours need a time zone, such as Europe/Paris.', field('timezone'));
    body.quietHours = { from, to, timezone };
  }
  const audience = fd.get('audience');
  if (audience === 'filter') body.audience = { filter: a.audience.filter };
  else if (audience) body.audience = { segmentId: Number(audience) };
  return body;
}

// ---------------------------------------------------------------------------------------------
// One automation: its funnel, variants side by side, enrollments.

const ENROLLMENTS_PAGE = 50;

export async function showAutomation(main, { id }) {
  render(main, html`<p><a href="/app/automations">← Automations</a></p><div id="automation"><p class="muted">Loading…</p></div>`);
  const box = main.querySelector('#automation');
  let offset = 0;
  let status = '';
  let confirming = false;
  const load = async () => {
    const [a, enrolled] = await Promise.all([
      api(`/api/crm/automations/${id}`),
      api(`/api/crm/automations/${id}/enrollments` + qs({ status, limit: ENROLLMENTS_PAGE, offset: offset || '' })),
    ]);
    const focused = document.activeElement?.id;
    update(box, automationPage(a, enrolled, { offset, status, confirming }));
    if (focused) document.getElementById(focused)?.focus();
  };
  box.addEventListener('click', async (e) => {
    if (await control(e, load)) return;
    const b = e.target.closest('button');
    if (!b) return;
    if (b.id === 'delete') {
      confirming = true;
      await load();
      document.getElementById('delete-yes')?.focus();
    } else if (b.id === 'delete-no') {
      confirming = false;
      await load();
      document.getElementById('delete')?.focus();
    } else if (b.id === 'delete-yes') {
      b.disabled = true;
      try {
        await api(`/api/crm/automations/${id}`, { method: 'DELETE' });
        toast('Automation deleted');
        go('/app/automations');
      } catch (err) {
        toast(`Not deleted: ${err.message}`);
        b.disabled = false;
      }
    } else if (b.dataset.page) {
      offset = Math.max(0, Number(b.dataset.page));
      await load();
    }
  });
  box.addEventListener('change', async (e) => {
    if (e.target.id !== 'enrollment-status') return;
    status = e.target.value;
    offset = 0;
    await load();
  });
  try {
    await load();
  } catch (e) {
    render(box, errorBox(e));
    return;
  }
  return every(2000, load);
}

function automationPage(a, enrolled, { offset, status, confirming }) {
  const m = a.metrics;
  const rules = [
    a.stopOnReply ? 'stops when the fan writes in' : '',
    a.oncePerFan ? 'once per fan' : '',
    a.cooldownHours ? `cooldown ${a.cooldownHours} h` : '',
    a.quietHours ? `quiet ${a.quietHours.from}–${a.quietHours.to} (${a.quietHours.timezone})` : '',
    a.audience?.segmentId ? `audience: segment ${a.audience.segmentId}` : a.audience?.filter ? `audience: ${describe(a.audience.filter)}` : 'audience: every fan',
  ].filter(Boolean);
  const exited = Object.entries(m.exitedBy);
  return html`<h1>${a.name} ${statusBadge(a)}</h1>
    <p><strong>Trigger:</strong> ${triggerText(a.trigger)} · <span class="muted">version ${a.version}, updated ${when(a.updatedAt)}</span></p>
    <p class="muted">${rules.join(' · ')}</p>
    <div class="row spaced">${controls(a)}
      <a class="button secondary small" href="/app/automations/${a.id}/edit" id="edit">Edit</a>
      <button type="button" class="secondary small" id="delete" aria-label="Delete ${a.name}">Delete</button></div>
    ${confirming
      ? html`<div class="card confirm" role="group" aria-labelledby="confirm-h"><p id="confirm-h" class="mt0">Delete “${a.name}”? It enrolls no one any more and its ${num(m.active)} running enrollment${m.active === 1 ? '' : 's'} end.</p>
        <div class="row"><button type="button" id="delete-yes">Yes, delete</button><button type="button" class="secondary" id="delete-no">Keep it</button></div></div>`
      : ''}
    <div class="figures">
      ${[['enrolled', 'enrolled'], ['active', 'active'], ['completed', 'completed'], ['exited', 'exited'], ['sent', 'sent'], ['purchases', 'purchases']].map(
        ([k, label]) => html`<div class="figure"><div class="value" data-metric="${k}">${num(m[k])}</div><div class="label">${label}</div></div>`,
      )}
      <div class="figure"><div class="value" data-metric="revenue">${cents(m.revenueCents)}</div><div class="label">revenue</div></div>
    </div>
    ${exited.length ? html`<p class="muted" id="exited-by">Exited: ${exited.map(([why, n]) => `${num(n)} ${why.replaceAll('_', ' ')}`).join(', ')}</p>` : ''}
    <h2 id="funnel-h">Funnel per step</h2>
    <ol class="funnel" aria-labelledby="funnel-h">${a.steps.map((s, i) => funnelStep(a, s, m.steps[i], i))}</ol>
    ${m.steps.length > a.steps.length ? html`<p class="muted">Steps of older versions past this version's last: ${m.steps.slice(a.steps.length).map((s) => `step ${s.step + 1} (${s.kind}) ${num(s.entered)} entered`).join(', ')}</p>` : ''}
    <h2 id="enrollments-h">Enrollments</h2>
    <div class="row spaced">
      <label>Show <select id="enrollment-status">${[['', 'all'], ['active', 'active'], ['completed', 'completed'], ['exited', 'exited']].map(
        ([v, w]) => html`<option value="${v}" ${v === status ? 'selected' : ''}>${w}</option>`,
      )}</select></label>
      <span class="muted" id="enrollment-count">${num(enrolled.total)} enrollment${enrolled.total === 1 ? '' : 's'}</span>
    </div>
    ${enrolled.items.length
      ? html`<div class="table-wrap"><table><thead><tr><th scope="col">Fan</th><th scope="col">Status</th><th scope="col">At step</th><th scope="col" class="hide-narrow">Started</th><th scope="col">Steps so far</th></tr></thead>
        <tbody>${enrolled.items.map(
          (e) => html`<tr data-enrollment="${e.id}"><td><a href="/app/fans/${e.fanId}">fan ${e.fanId}</a>${e.version !== a.version ? html`<div class="muted">v${e.version}</div>` : ''}</td>
            <td>${enrollmentStatus(e)}</td>
            <td>${e.status === 'active' ? e.step + 1 : html`<span class="muted">ended</span>`}${e.status === 'active' && e.dueAt ? html`<div class="muted">due ${when(e.dueAt)}${e.heldBy ? `, held by ${e.heldBy.replace('_', ' ')}` : ''}</div>` : ''}</td>
            <td class="hide-narrow">${when(e.createdAt)}</td>
            <td>${e.steps.length ? e.steps.map((s) => html`<div>${s.step + 1}. ${s.kind} ${s.outcome}${s.variant ? html` <span class="tag">${s.variant}</span>` : ''}${s.messageStatus ? html` <span class="status-${s.messageStatus}">${s.messageStatus}</span>` : ''}</div>`) : html`<span class="muted">none yet</span>`}</td></tr>`,
        )}</tbody></table></div>
        <div class="pager">
          ${offset > 0 ? html`<button type="button" class="secondary small" id="enrollments-prev" data-page="${offset - ENROLLMENTS_PAGE}">← Newer</button>` : ''}
          <span class="muted">${offset + 1}–${offset + enrolled.items.length} of ${num(enrolled.total)}</span>
          ${offset + ENROLLMENTS_PAGE < enrolled.total ? html`<button type="button" class="secondary small" id="enrollments-next" data-page="${offset + ENROLLMENTS_PAGE}">Older →</button>` : ''}
        </div>`
      : html`<p class="muted" id="no-enrollments">No enrollments${status ? ` ${status}` : ''} yet.</p>`}`;
}

function enrollmentStatus(e) {
  const words = e.status === 'exited' && e.exitReason ? `exited: ${e.exitReason.replaceAll('_', ' ')}` : e.status;
  return html`<span class="badge status-${e.status}">${words}</span>`;
}

/** One step of the funnel: how many went through and what it did; a send's variants side by side. */
function funnelStep(a, s, f, i) {
  f = f ?? { entered: 0, waiting: 0, outcomes: {}, messages: 0, sent: 0, delivered: 0, opened: 0, purchases: 0, revenueCents: 0, variants: [] };
  const kind = kindOf(s);
  const top = Math.max(a.metrics.enrolled, 1);
  const outcomes = Object.entries(f.outcomes);
  return html`<li class="card funnel-step" data-funnel-step="${i}">
    <div class="funnel-head"><strong>Step ${i + 1} · ${kind}</strong> <span class="muted">${stepText(s)}</span></div>
    <div class="funnel-bar"><meter min="0" max="${top}" value="${f.entered}" aria-label="Step ${i + 1}: ${f.entered} of ${a.metrics.enrolled} enrolled went through"></meter>
      <span><strong data-entered>${num(f.entered)}</strong> entered${f.waiting ? html` · <span data-waiting>${num(f.waiting)}</span> waiting here` : ''}</span></div>
    ${outcomes.length ? html`<p class="muted small mt0">${outcomes.map(([o, n]) => `${num(n)} ${o}`).join(' · ')}</p>` : ''}
    ${kind === 'send'
      ? html`<dl class="inline-figures">
          <div><dt>queued</dt><dd>${num(f.messages)}</dd></div><div><dt>sent</dt><dd data-step-sent>${num(f.sent)}</dd></div>
          <div><dt>delivered</dt><dd>${num(f.delivered)}</dd></div><div><dt>opened</dt><dd>${num(f.opened)}</dd></div>
          <div><dt>purchases</dt><dd>${num(f.purchases)}</dd></div><div><dt>revenue</dt><dd>${cents(f.revenueCents)}</dd></div>
        </dl>
        ${s.send.variants?.length ? variantsTable(s.send.variants, f.variants, i) : ''}`
      : ''}
  </li>`;
}

/** A send's variants in columns, each with its figures (zero until it has sent). */
function variantsTable(defined, figures, i) {
  const byName = Object.fromEntries(figures.map((v) => [v.name, v]));
  // The variants of this version, then any of an older version's that still has figures.
  const names = [...defined.map((v) => v.name), ...figures.map((v) => v.name).filter((n) => !defined.some((d) => d.name === n))];
  const cols = names.map((name) => {
    const d = defined.find((v) => v.name === name);
    const v = byName[name] ?? { messages: 0, sent: 0, delivered: 0, opened: 0, purchases: 0, revenueCents: 0, conversion: 0, revenuePerRecipientCents: 0 };
    return { name, d, v };
  });
  const total = defined.reduce((s, v) => s + v.weight, 0) || 1;
  const row = (label, f) => html`<tr><th scope="row">${label}</th>${cols.map((c) => html`<td class="num">${f(c)}</td>`)}</tr>`;
  return html`<div class="table-wrap variants-table"><table data-variants-of="${i}">
    <caption>Step ${i + 1}: variants side by side</caption>
    <thead><tr><th scope="col">Variant</th>${cols.map((c) => html`<th scope="col" class="num" data-variant-col="${c.name}">${c.name}</th>`)}</tr></thead>
    <tbody>
      ${row('Share', (c) => (c.d ? pct(c.d.weight / total) : 'older version'))}
      ${row('Message', (c) => html`<span class="variant-message">${c.d ? clip(c.d.content, 80) : ''}</span>`)}
      ${row('Price', (c) => (c.d?.priceCents ? cents(c.d.priceCents) : 'free'))}
      ${row('Sent', (c) => html`<span data-variant-sent="${c.name}">${num(c.v.sent)}</span>`)}
      ${row('Delivered', (c) => num(c.v.delivered))}
      ${row('Opened', (c) => num(c.v.opened))}
      ${row('Purchases', (c) => num(c.v.purchases))}
      ${row('Conversion', (c) => pct(c.v.conversion))}
      ${row('Revenue', (c) => cents(c.v.revenueCents))}
      ${row('Per recipient', (c) => cents(c.v.revenuePerRecipientCents))}
    </tbody></table></div>`;
}

// ---------------------------------------------------------------------------------------------
// A fan's timeline, shown on the fan's page.

/**
 * Fills `box` with what the automations did to fan `fanId`, newest enrollment first, and keeps
 * it fresh; returns the function that stops the refreshes.
 */
export function showTimeline(box, fanId) {
  render(
    box,
    html`<h2 id="timeline-h">Automations timeline</h2>
      <div id="timeline"><p class="muted">Loading…</p></div>`,
  );
  const list = box.querySelector('#timeline');
  const load = async () => {
    const page = await api(`/api/crm/fans/${fanId}/timeline` + qs({ limit: 50 }));
    update(
      list,
      page.items.length
        ? html`<ol class="timeline" aria-labelledby="timeline-h">${page.items.map(
            (e) => html`<li class="card" data-timeline-automation="${e.automationId}">
              <div class="row"><a href="/app/automations/${e.automationId}">${e.automationName ?? `automation ${e.automationId}`}</a> ${enrollmentStatus(e)}
                <span class="muted">enrolled ${when(e.createdAt)}${e.finishedAt ? `, ended ${when(e.finishedAt)}` : ''}</span></div>
              <ul class="timeline-steps">
                ${e.steps.map(
                  (s) => html`<li><time datetime="${s.at}">${when(s.at)}</time> · step ${s.step + 1} ${s.kind}: <strong>${s.outcome}</strong>${s.variant ? html` <span class="tag">variant ${s.variant}</span>` : ''}${s.heldBy ? html` <span class="muted">(held by ${s.heldBy.replace('_', ' ')})</span>` : ''}${s.messageId
                    ? html` · message ${s.messageId} <span class="status-${s.messageStatus}" data-message-status>${s.messageStatus}</span>`
                    : ''}</li>`,
                )}
                ${e.status === 'active' ? html`<li class="muted">next: step ${e.step + 1}${e.dueAt ? `, due ${when(e.dueAt)}` : ''}${e.heldBy ? ` (held by ${e.heldBy.replace('_', ' ')})` : ''}</li>` : ''}
              </ul>
            </li>`,
          )}</ol>${page.total > page.items.length ? html`<p class="muted">The newest ${page.items.length} of ${page.total}.</p>` : ''}`
        : html`<p class="muted" id="no-timeline">No automation has enrolled this fan.</p>`,
    );
  };
  load().catch((e) => update(list, errorBox(e)));
  return every(3000, load);
}
