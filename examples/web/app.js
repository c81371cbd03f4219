// Order-tracking demo page: stomp.js (UMD bundle, global `StompJs`) over WebSocket.
//
//  * CONNECT with `login` = the user name (the broker's development mode on loopback uses it
//    as the user; with authentication configured it would come from a token instead).
//  * SUBSCRIBE /user/queue/order-updates — the broker resolves it to /user/<me>/queue/order-updates,
//    where its Kafka route `order-results=/user/{json:/customerId}/queue/order-updates` delivers.
//  * "Place order": SEND /app/orders (→ Kafka topic `orders`) with `kafka-key` = orderId and a
//    `receipt`; the broker sends the RECEIPT only after Kafka acknowledged the record. The body
//    carries no customer: the broker stamps the session's user on the record (`stomp-user`)
//    and the order service takes the customer from there.
//
// Query string: ?broker=ws://host:port/ws  &orders=<kafka topic>  &user=<name>  &autoconnect=1  &debug=1
'use strict';

const params = new URLSearchParams(location.search);
const BROKER_URL = params.get('broker') || 'ws://127.0.0.1:15674/ws';
const ORDERS_DEST = `/app/${params.get('orders') || 'orders'}`;
const UPDATES_DEST = '/user/queue/order-updates';
// What the broker's destination templates accept as a user name (one path segment).
const USER_RE = /^(?!.*\.\.)[A-Za-z0-9_~@+=-]([A-Za-z0-9._~@+=-]{0,62}[A-Za-z0-9_~@+=-])?$/;
const CATALOG = [
  { sku: 'TEA-GREEN', name: 'Green tea' }, { sku: 'MUG-BLUE', name: 'Blue mug' },
  { sku: 'BEANS-1KG', name: 'Coffee beans 1 kg' }, { sku: 'KETTLE', name: 'Kettle' },
  { sku: 'FILTERS', name: 'Paper filters' },
];

const $ = (id) => document.getElementById(id);
const ui = {
  form: $('connect-form'), user: $('user'), connect: $('connect'), disconnect: $('disconnect'),
  state: $('state'), whoami: $('whoami'), place: $('place'), orders: $('orders'),
  noOrders: $('no-orders'), log: $('log'),
};
$('broker-url').textContent = BROKER_URL;
$('orders-dest').textContent = ORDERS_DEST;

let client = null;
let user = null;
let subscribed = false;
const orders = new Map(); // orderId -> { el, steps: Set<step>, sent: bool }
let seq = 0;

function setState(state, detail) {
  document.body.dataset.state = state;
  ui.state.textContent = detail ? `${state}: ${detail}` : state;
  const active = state !== 'disconnected' && state !== 'error';
  ui.connect.disabled = active;
  ui.user.disabled = active;
  ui.disconnect.disabled = !active;
  ui.place.disabled = !(state === 'connected' && subscribed);
}

// 24-hour clock with milliseconds: steps are a few hundred ms apart.
function clock(t) {
  const d = new Date(t);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}.${p(d.getMilliseconds(), 3)}`;
}

function log(text, cls) {
  const li = document.createElement('li');
  li.textContent = `${clock(Date.now())}  ${text}`;
  if (cls) li.className = cls;
  ui.log.prepend(li);
  while (ui.log.children.length > 200) ui.log.lastChild.remove();
}

function connect(name) {
  user = name;
  subscribed = false;
  ui.whoami.textContent = `as ${user}`;
  client = new StompJs.Client({
    brokerURL: BROKER_URL,
    connectHeaders: { login: user },
    reconnectDelay: 2000,
    heartbeatIncoming: 10000,
    heartbeatOutgoing: 10000,
    debug: params.has('debug') ? (s) => console.log(s) : () => {},
  });
  window.stompClient = client;
  client.onConnect = (frame) => {
    setState('connected');
    log(`CONNECTED (STOMP ${frame.headers.version}, server ${frame.headers.server || '?'})`);
    // A new session after a reconnect: subscribe again, confirmed by a receipt.
    subscribed = false;
    const receipt = `sub-${++seq}`;
    client.watchForReceipt(receipt, () => {
      subscribed = true;
      document.body.dataset.subscribed = 'true';
      setState('connected');
      log(`SUBSCRIBED ${UPDATES_DEST}`);
    });
    client.subscribe(UPDATES_DEST, onUpdate, { receipt });
  };
  client.onStompError = (frame) => {
    log(`ERROR ${frame.headers.message || ''} ${frame.body || ''}`.trim(), 'bad');
    setState('error', frame.headers.message || 'broker error');
  };
  client.onWebSocketClose = (evt) => {
    subscribed = false;
    document.body.dataset.subscribed = 'false';
    for (const o of orders.values()) {
      if (o.sent === false) markSend(o, 'not confirmed (connection lost) — not retried', 'bad');
    }
    if (client.active) {
      setState('reconnecting', `closed ${evt.code}, retrying in 2 s`);
      log(`connection closed (${evt.code}); reconnecting`, 'bad');
    } else {
      setState('disconnected');
      log('disconnected');
    }
  };
  client.onWebSocketError = () => log('WebSocket error', 'bad');
  setState('connecting');
  log(`connecting to ${BROKER_URL} as ${user}`);
  client.activate();
}

function orderCard(orderId, items) {
  const li = document.createElement('li');
  li.className = 'order';
  li.dataset.orderId = orderId;
  li.innerHTML = `<div class="head"><span class="id"></span><span class="send"></span></div>
    <div class="items"></div><div class="progress"><div></div></div><ol class="steps"></ol>`;
  li.querySelector('.id').textContent = orderId;
  li.querySelector('.items').textContent = items && items.length
    ? items.map((i) => `${i.qty} × ${i.name}`).join(', ') : '';
  ui.orders.prepend(li);
  ui.noOrders.hidden = true;
  const o = { el: li, steps: new Set(), sent: null };
  orders.set(orderId, o);
  return o;
}

function markSend(o, text, cls) {
  const s = o.el.querySelector('.send');
  s.textContent = text;
  s.className = `send ${cls || ''}`;
  if (cls === 'ok' || cls === 'bad') o.sent = cls === 'ok';
}

function placeOrder() {
  const orderId = `${user}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 6)}`;
  const items = [];
  const n = 1 + Math.floor(Math.random() * 3);
  for (const p of [...CATALOG].sort(() => Math.random() - 0.5).slice(0, n)) {
    items.push({ ...p, qty: 1 + Math.floor(Math.random() * 3) });
  }
  // No customerId: the order service takes the customer from the broker-stamped
  // Kafka header stomp-user (the authenticated user of this session).
  const order = { orderId, items };
  const o = orderCard(orderId, items);
  o.sent = false;
  markSend(o, 'sending…');
  const receipt = `order-${orderId}`;
  const t0 = performance.now();
  client.watchForReceipt(receipt, () => {
    markSend(o, `accepted by Kafka (${Math.round(performance.now() - t0)} ms)`, 'ok');
    log(`RECEIPT for ${orderId}: written to Kafka`);
  });
  client.publish({
    destination: ORDERS_DEST,
    body: JSON.stringify(order),
    headers: { receipt, 'kafka-key': orderId, 'content-type': 'application/json' },
  });
  log(`SEND ${ORDERS_DEST} ${orderId}`);
  window.demo.lastOrderId = orderId;
  return orderId;
}

function onUpdate(message) {
  let u;
  try {
    u = JSON.parse(message.body);
  } catch {
    log(`unreadable update: ${message.body}`, 'bad');
    return;
  }
  const h = message.headers;
  const replayed = h.replayed === 'true';
  log(`MESSAGE ${u.orderId} ${u.status} (kafka ${h['kafka-topic']}/${h['kafka-partition']}@${h['kafka-offset']}${replayed ? ', replayed' : ''})`);
  const o = orders.get(u.orderId) || orderCard(u.orderId, null);
  // At-least-once delivery and replays after a reconnect: show each step once.
  if (o.steps.has(u.step)) return;
  o.steps.add(u.step);
  const li = document.createElement('li');
  li.dataset.status = u.status;
  li.dataset.step = u.step;
  if (replayed) li.className = 'replayed';
  li.textContent = u.status;
  const when = document.createElement('small');
  when.textContent = clock(u.at);
  li.append(when);
  o.el.querySelector('.steps').append(li);
  const total = u.totalSteps || u.step;
  o.el.querySelector('.progress > div').style.width = `${Math.min(100, (100 * o.steps.size) / total)}%`;
  if (o.steps.size >= total) o.el.classList.add('done');
}

ui.form.addEventListener('submit', (e) => {
  e.preventDefault();
  const name = ui.user.value.trim();
  if (!USER_RE.test(name)) {
    setState('error', 'user name: letters, digits and . _ ~ @ + = - only');
    return;
  }
  connect(name);
});
ui.disconnect.addEventListener('click', async () => {
  if (client) await client.deactivate();
  setState('disconnected');
});
ui.place.addEventListener('click', placeOrder);

window.demo = { placeOrder, lastOrderId: null, get client() { return client; } };
setState('disconnected');
if (params.get('user')) {
  ui.user.value = params.get('user');
  if (params.get('autoconnect') === '1') ui.form.requestSubmit();
}
