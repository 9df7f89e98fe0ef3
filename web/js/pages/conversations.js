// Conversations: the list (newest first) and a thread with its composer.
import { api, qs } from '../api.js';
import { html, render, update, esc, avatar, cents, time, when, errorBox, toast, every } from '../ui.js';

const PAGE = 50;
// Estimated send times from the send answers, by message id, until the thread's list carries
// the message (which then has its own estimate while it waits).
const estimates = new Map();

export async function show(main, { id }) {
  render(
    main,
    html`<h1 class="hide-narrow">Conversations</h1>
      <div class="inbox ${id ? 'has-thread' : ''}">
        <ul class="convs" id="convs" aria-label="Conversations"><li class="muted pad">Loading…</li></ul>
        <section class="thread" id="thread" aria-label="Thread">
          ${id ? '' : html`<p class="muted pad">Pick a conversation.</p>`}
        </section>
      </div>`,
  );
  const stops = [];
  const list = main.querySelector('#convs');
  const refreshList = () => loadList(list, id);
  // The list and the thread load side by side.
  const [, stopThread] = await Promise.all([refreshList(), id ? openThread(main.querySelector('#thread'), Number(id), refreshList) : null]);
  stops.push(every(10000, refreshList));
  if (stopThread) stops.push(stopThread);
  return () => stops.forEach((s) => s());
}

// How many conversations the list shows; "Show more" adds a page.
let listSize = PAGE;

async function loadList(el, current) {
  let page;
  try {
    page = { items: [], total: 0 };
    for (let offset = 0; offset < listSize; offset += 200) {
      const p = await api('/api/crm/conversations' + qs({ limit: Math.min(200, listSize - offset), offset }));
      page.items.push(...p.items);
      page.total = p.total;
      if (offset + 200 >= p.total) break;
    }
  } catch (e) {
    render(el, html`<li class="pad">${errorBox(e)}</li>`);
    return;
  }
  if (!page.items.length) {
    render(el, html`<li class="muted pad">No conversations yet. Open one from a <a href="/app/fans">fan's page</a>.</li>`);
    return;
  }
  update(
    el,
    html`${page.items.map(
      (c) => html`<li><a href="/app/messages/onlyfans/${c.id}" data-conversation="${c.id}" aria-current="${String(c.id) === String(current)}">
          ${avatar(c.fan)}
          <span class="who"><strong>${c.fan.name || c.fan.handle}</strong><span class="muted">${c.fan.handle} · ${when(c.lastMessageAt)}</span></span>
          ${c.unreadCount ? html`<span class="badge unread" aria-label="${c.unreadCount} unread">${c.unreadCount}</span>` : ''}
        </a></li>`,
    )}
    ${page.total > page.items.length ? html`<li class="pad"><button type="button" class="secondary" id="more-conversations">Show more (${page.items.length} of ${page.total})</button></li>` : ''}`,
  );
  el.querySelector('#more-conversations')?.addEventListener('click', () => {
    listSize += PAGE;
    loadList(el, current);
  });
}

async function openThread(el, id, refreshList) {
  let conv;
  // The message count comes with the conversation, so the newest page is the next request.
  const counted = api(`/api/crm/conversations/${id}/messages` + qs({ limit: 1 })).catch((e) => e);
  try {
    conv = await api(`/api/crm/conversations/${id}`);
  } catch (e) {
    render(el, html`<div class="pad">${errorBox(e)}</div>`);
    return () => {};
  }
  render(
    el,
    html`<header>
        <a class="back" href="/app/messages/onlyfans" aria-label="Back to conversations">←</a>
        ${avatar(conv.fan)}
        <div><strong>${conv.fan.name || conv.fan.handle}</strong>
          <div class="muted"><a href="/app/fans/${conv.fan.id}">${conv.fan.handle}</a></div></div>
      </header>
      <ol class="messages" id="messages" aria-label="Messages" aria-live="polite" tabindex="0"></ol>
      <form class="composer stack" id="composer">
        <label>Message <textarea name="text" id="message-text" required maxlength="5000" placeholder="Write a message…"></textarea></label>
        <div class="row">
          <label>Price (USD, optional) <input name="price" type="number" min="0" step="0.01" inputmode="decimal" size="8"></label>
          <label class="grow">Attachment URL (optional) <input name="url" type="url" placeholder="https://…"></label>
          <label>Type <select name="kind"><option value="image">image</option><option value="video">video</option></select></label>
          <button type="submit">Send</button>
        </div>
      </form>`,
  );
  const ol = el.querySelector('#messages');
  const byId = new Map();
  let start = 0; // offset of the oldest loaded message
  let total = 0;
  let loadingOlder = false;

  const draw = ({ keep } = {}) => {
    const fromBottom = ol.scrollHeight - ol.scrollTop;
    const atBottom = fromBottom - ol.clientHeight < 40;
    const items = [...byId.values()].sort((a, b) => (a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : a.id - b.id));
    update(
      ol,
      html`${start > 0 ? html`<li class="muted older"><button type="button" class="secondary" id="older">Load older messages</button></li>` : ''}
      ${items.length ? items.map(message) : html`<li class="muted">No messages yet.</li>`}`,
    );
    if (keep) ol.scrollTop = ol.scrollHeight - fromBottom;
    else if (atBottom || keep === false) ol.scrollTop = ol.scrollHeight;
  };

  const merge = (page) => {
    total = page.total;
    for (const m of page.items) byId.set(m.id, m);
  };

  // The newest page first; older pages as the reader scrolls up.
  try {
    const first = await counted;
    if (first instanceof Error) throw first;
    start = Math.max(0, first.total - PAGE);
    merge(await api(`/api/crm/conversations/${id}/messages` + qs({ limit: PAGE, offset: start })));
  } catch (e) {
    render(ol, html`<li>${errorBox(e)}</li>`);
  }
  draw({ keep: false });

  const loadOlder = async () => {
    if (loadingOlder || start === 0) return;
    loadingOlder = true;
    const from = Math.max(0, start - PAGE);
    try {
      merge(await api(`/api/crm/conversations/${id}/messages` + qs({ limit: start - from, offset: from })));
      start = from;
      draw({ keep: true });
    } finally {
      loadingOlder = false;
    }
  };
  ol.addEventListener('scroll', () => {
    if (ol.scrollTop < 60) loadOlder();
  });

  // Refreshes the newest messages; while any outgoing one is on its way, every 1.5 s.
  const pending = () => [...byId.values()].some((m) => m.direction === 'out' && (m.status === 'queued' || m.status === 'sending'));
  const refresh = async () => {
    const first = await api(`/api/crm/conversations/${id}/messages` + qs({ limit: 1 }));
    const from = Math.max(start, first.total - PAGE);
    merge(await api(`/api/crm/conversations/${id}/messages` + qs({ limit: PAGE, offset: from })));
    draw();
  };
  let stopped = false;
  let timer;
  // Every 1.5 s while a message is on its way, otherwise every 10 s (for new messages).
  const poll = () => {
    clearTimeout(timer);
    if (stopped) return;
    timer = setTimeout(
      async () => {
        try {
          await refresh();
        } catch (e) {
          console.warn('refresh failed:', e.message);
        }
        poll();
      },
      pending() ? 1500 : 10000,
    );
  };
  poll();

  el.addEventListener('click', async (e) => {
    if (e.target.id === 'older') {
      loadOlder();
      return;
    }
    const retry = e.target.closest('button[data-retry]');
    if (!retry) return;
    retry.disabled = true;
    try {
      const out = await api(`/api/onlyfans/messages/failed/${retry.dataset.retry}/retry`, { method: 'POST' });
      if (out?.estimatedSendTime) estimates.set(Number(retry.dataset.retry), out.estimatedSendTime);
      toast('Queued again');
      await refresh();
      poll();
    } catch (err) {
      retry.disabled = false;
      toast(`Retry failed: ${err.message}`);
    }
  });

  const form = el.querySelector('#composer');
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const fd = new FormData(form);
    const body = { text: fd.get('text') };
    if (fd.get('price')) body.priceCents = Math.round(Number(fd.get('price')) * 100);
    if (fd.get('url')) body.attachments = [{ type: fd.get('kind'), url: fd.get('url') }];
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    try {
      const out = await api(`/api/crm/conversations/${id}/messages`, { method: 'POST', body });
      estimates.set(out.messageId, out.estimatedSendTime);
      form.reset();
      await refresh();
      ol.scrollTop = ol.scrollHeight;
      poll();
      refreshList();
    } catch (err) {
      toast(`Not sent: ${err.message}`);
    } finally {
      button.disabled = false;
      form.querySelector('textarea').focus();
    }
  });
  form.querySelector('textarea').addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) form.requestSubmit();
  });

  // Opening the thread reads it.
  if (conv.unreadCount > 0) {
    api(`/api/crm/conversations/${id}/read`, { method: 'POST' })
      .then(refreshList)
      .catch((e) => console.warn('mark read failed:', e.message));
  }

  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}

function message(m) {
  const attachments = m.attachments.map((a) => html`<div><a href="${a.url}" rel="noreferrer noopener" target="_blank">${a.type} attachment</a></div>`);
  return html`<li class="msg ${m.direction}" data-id="${m.id}" data-status="${m.status}">
    <p>${m.text}</p>${attachments}
    <div class="meta">
      ${m.priceCents ? html`<span>${cents(m.priceCents)}</span>` : ''}
      ${m.campaignId ? html`<a href="/app/campaigns/${m.campaignId}">campaign</a>` : ''}
      ${m.direction === 'out' ? status(m) : html`<span>${time(m.createdAt)}</span>`}
    </div>
  </li>`;
}

function status(m) {
  switch (m.status) {
    case 'queued':
    case 'sending': {
      const eta = m.estimatedSendTime || estimates.get(m.id);
      return html`<span class="status status-${m.status}">${m.status}${eta ? html` · about ${time(eta)}` : ''}</span>`;
    }
    case 'sent':
      return html`<span class="status status-sent">sent ${time(m.sentAt)}${m.deliveredAt ? ' · delivered' : ''}${m.openedAt ? ' · opened' : ''}</span>`;
    case 'failed':
      return html`<span class="status status-failed">failed: ${m.error || 'unknown reason'}</span>
        <button type="button" class="secondary" data-retry="${m.id}">Retry</button>`;
    default:
      return html`<span class="status">${esc(m.status)}</span>`;
  }
}

