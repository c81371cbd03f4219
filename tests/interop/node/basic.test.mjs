// stomp.js (over the `ws` package) against stomp-broker: connect, pub/sub, bodies, headers,
// wildcard topics.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBroker } from '../lib/broker.mjs';
import {
  connectStomp, subscribeWithReceipt, publishWithReceipt, uniq, RawStompWs,
} from '../lib/stomp.mjs';

let broker;
const clients = [];
async function connect(opts = {}) {
  const c = await connectStomp(broker.wsUrl, opts);
  clients.push(c);
  return c;
}

before(async () => { broker = await startBroker(); });
after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (broker) await broker.stop();
});

test('CONNECT over WebSocket: v12.stomp subprotocol, CONNECTED with version 1.2, heart-beat, server, session', async () => {
  const c = await connect();
  assert.equal(c.state.ws.protocol, 'v12.stomp', 'negotiated WebSocket subprotocol');
  const h = c.connected.headers;
  assert.equal(h.version, '1.2', `CONNECTED version (headers: ${JSON.stringify(h)})`);
  assert.match(h['heart-beat'] ?? '', /^\d+,\d+$/, 'CONNECTED heart-beat');
  // Broker default offer is 10000,10000 (stomp.js offers 10000,10000 too).
  assert.equal(h['heart-beat'], '10000,10000', 'CONNECTED heart-beat equals the default offer');
  assert.ok(h.server && /^[^\s/]+(\/\S+)?/.test(h.server), `CONNECTED server header: ${h.server}`);
  assert.ok(h.session && h.session.length > 0, 'CONNECTED session header');
  assert.ok(c.client.connected, 'client reports connected');
});

test('WebSocket subprotocol negotiation picks the one offered (v11.stomp, v10.stomp)', async () => {
  for (const [proto, accept, version] of [['v11.stomp', '1.1', '1.1'], ['v10.stomp', '1.0', '1.0']]) {
    const raw = await RawStompWs.open(broker.wsUrl, [proto]);
    try {
      assert.equal(raw.protocol, proto);
      const f = await raw.connect({ 'accept-version': accept });
      assert.equal(f.command, 'CONNECTED', `CONNECTED for ${proto}: got ${f.command} ${JSON.stringify(f.headers)}`);
      if (version !== '1.0' || f.headers.version !== undefined) assert.equal(f.headers.version, version);
    } finally {
      raw.close();
    }
  }
});

test('subscribe with receipt, then publish and receive a text message', async () => {
  const c = await connect();
  const dest = `/topic/${uniq('basic')}`;
  const { sub, inbox } = await subscribeWithReceipt(c.client, dest);
  const probe = uniq('probe');
  await publishWithReceipt(c.client, {
    destination: dest,
    body: 'hello, wörld ✓ 🚀',
    headers: { 'content-type': 'text/plain;charset=utf-8', 'x-probe': probe },
  });
  const [m] = await inbox.waitCount(1);
  assert.equal(m.body, 'hello, wörld ✓ 🚀');
  assert.equal(m.headers.destination, dest);
  assert.equal(m.headers.subscription, sub.id);
  assert.ok(m.headers['message-id'], 'message-id header');
  assert.equal(m.headers['content-type'], 'text/plain;charset=utf-8');
  const wsMsg = c.wsMessageContaining(probe);
  assert.ok(wsMsg, 'raw WebSocket message carrying the MESSAGE frame');
  assert.equal(wsMsg.isBinary, false, 'text/plain UTF-8 body travels in a TEXT WebSocket frame');
});

test('JSON body travels in a TEXT frame', async () => {
  const c = await connect();
  const dest = `/topic/${uniq('json')}`;
  const { inbox } = await subscribeWithReceipt(c.client, dest);
  const probe = uniq('probe');
  const body = JSON.stringify({ a: 1, s: 'ünïcode', arr: [1, 2, 3] });
  await publishWithReceipt(c.client, { destination: dest, body, headers: { 'content-type': 'application/json', 'x-probe': probe } });
  const [m] = await inbox.waitCount(1);
  assert.deepEqual(JSON.parse(m.body), JSON.parse(body));
  assert.equal(c.wsMessageContaining(probe)?.isBinary, false, 'application/json → TEXT frame');
});

test('binary body (application/octet-stream) arrives byte-exact in a BINARY frame', async () => {
  const c = await connect();
  const dest = `/topic/${uniq('binary')}`;
  const { inbox } = await subscribeWithReceipt(c.client, dest);
  // Every byte value, including NUL, and invalid UTF-8 sequences.
  const bytes = new Uint8Array(512);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 7 + 3) & 0xff;
  bytes.set([0x00, 0xff, 0xfe, 0xc3, 0x28, 0x00], 100);
  const probe = uniq('probe');
  await publishWithReceipt(c.client, {
    destination: dest,
    binaryBody: bytes,
    headers: { 'content-type': 'application/octet-stream', 'x-probe': probe },
  });
  const [m] = await inbox.waitCount(1);
  assert.equal(m.isBinaryBody, true);
  assert.equal(m.headers['content-type'], 'application/octet-stream');
  assert.equal(Number(m.headers['content-length']), bytes.length, 'content-length header on MESSAGE');
  assert.deepEqual(Buffer.from(m.binaryBody), Buffer.from(bytes), 'exact bytes');
  assert.equal(c.wsMessageContaining(probe)?.isBinary, true, 'octet-stream → BINARY WebSocket frame');
});

test('valid UTF-8 body with a non-textual content-type goes in a BINARY frame', async () => {
  const c = await connect();
  const dest = `/topic/${uniq('bin-ct')}`;
  const { inbox } = await subscribeWithReceipt(c.client, dest);
  const probe = uniq('probe');
  await publishWithReceipt(c.client, {
    destination: dest,
    binaryBody: new TextEncoder().encode('plain ascii but declared binary'),
    headers: { 'content-type': 'application/octet-stream', 'x-probe': probe },
  });
  const [m] = await inbox.waitCount(1);
  assert.equal(new TextDecoder().decode(m.binaryBody), 'plain ascii but declared binary');
  assert.equal(c.wsMessageContaining(probe)?.isBinary, true, 'non-textual content-type → BINARY frame');
});

test('invalid UTF-8 body declared text/plain still goes in a BINARY frame, bytes intact', async () => {
  const c = await connect();
  const dest = `/topic/${uniq('bad-utf8')}`;
  const { inbox } = await subscribeWithReceipt(c.client, dest);
  const probe = uniq('probe');
  const bytes = Uint8Array.from([0x61, 0xff, 0xfe, 0x62, 0xc3, 0x28]);
  await publishWithReceipt(c.client, {
    destination: dest,
    binaryBody: bytes,
    headers: { 'content-type': 'text/plain', 'x-probe': probe },
  });
  const [m] = await inbox.waitCount(1);
  assert.deepEqual(Buffer.from(m.binaryBody), Buffer.from(bytes));
  assert.equal(c.wsMessageContaining(probe)?.isBinary, true, 'invalid UTF-8 → BINARY frame');
});

test('custom SEND headers pass through to MESSAGE (incl. escaped : \\n \\\\ in 1.2)', async () => {
  const c = await connect();
  const dest = `/topic/${uniq('headers')}`;
  const { inbox } = await subscribeWithReceipt(c.client, dest);
  const custom = {
    'x-custom': 'abc',
    'x-empty': '',
    'x-colon': 'a:b:c',
    'x-newline': 'line1\nline2',
    'x-backslash': 'c\\d',
    'x-unicode': 'ünïcødé ✓',
    correlation_id: 'corr-42',
    priority: '7',
  };
  await publishWithReceipt(c.client, { destination: dest, body: 'h', headers: custom });
  const [m] = await inbox.waitCount(1);
  for (const [k, v] of Object.entries(custom)) {
    assert.equal(m.headers[k], v, `header ${k} passes through (MESSAGE headers: ${JSON.stringify(m.headers)})`);
  }
  assert.equal(m.headers.receipt, undefined, 'receipt header of the SEND is not copied to MESSAGE');
});

test('a topic message reaches every subscriber (fan-out to two clients)', async () => {
  const a = await connect();
  const b = await connect();
  const dest = `/topic/${uniq('fanout')}`;
  const sa = await subscribeWithReceipt(a.client, dest);
  const sb = await subscribeWithReceipt(b.client, dest);
  await publishWithReceipt(a.client, { destination: dest, body: 'to all' });
  const [ma] = await sa.inbox.waitCount(1);
  const [mb] = await sb.inbox.waitCount(1);
  assert.equal(ma.body, 'to all');
  assert.equal(mb.body, 'to all');
});

test('wildcard subscriptions: * matches one segment, # zero or more', async () => {
  const c = await connect();
  const root = uniq('order').replace(/-/g, '_');
  const star = await subscribeWithReceipt(c.client, `/topic/${root}.*`);
  const hash = await subscribeWithReceipt(c.client, `/topic/${root}.#`);
  const mid = await subscribeWithReceipt(c.client, `/topic/${root}.*.created`);
  const publishes = [
    `${root}`, // # only (zero segments)
    `${root}.1`, // * and #
    `${root}.1.created`, // # and *.created
    `${root}.1.updated`, // # only
    `${root}.1.2.created`, // # only
    `${root}s.1`, // none (different first segment)
    `other.${root}.1`, // none
  ];
  for (const d of publishes) c.client.publish({ destination: `/topic/${d}`, body: d });
  // Sentinels, published last: each subscription has to see its own before we compare.
  await publishWithReceipt(c.client, { destination: `/topic/${root}.zz`, body: `${root}.zz` });
  await publishWithReceipt(c.client, { destination: `/topic/${root}.zz.created`, body: `${root}.zz.created` });
  await star.inbox.waitMatch((m) => m.body === `${root}.zz`, 5000, `${root}.zz on ${root}.*`);
  await hash.inbox.waitMatch((m) => m.body === `${root}.zz.created`, 5000, `${root}.zz.created on ${root}.#`);
  await mid.inbox.waitMatch((m) => m.body === `${root}.zz.created`, 5000, `${root}.zz.created on ${root}.*.created`);
  const bodies = (s) => s.inbox.items.map((m) => m.body).sort();
  assert.deepEqual(bodies(star), [`${root}.1`, `${root}.zz`].sort(), `${root}.* received`);
  assert.deepEqual(bodies(hash), [`${root}`, `${root}.1`, `${root}.1.created`, `${root}.1.updated`, `${root}.1.2.created`, `${root}.zz`, `${root}.zz.created`].sort(), `${root}.# received`);
  assert.deepEqual(bodies(mid), [`${root}.1.created`, `${root}.zz.created`].sort(), `${root}.*.created received`);
  // Each MESSAGE names the concrete destination and its own subscription.
  for (const s of [star, hash, mid]) {
    for (const m of s.inbox.items) {
      assert.equal(m.headers.subscription, s.sub.id);
      assert.equal(m.headers.destination, `/topic/${m.body}`);
    }
  }
});

test('unsubscribe stops delivery', async () => {
  const c = await connect();
  const dest = `/topic/${uniq('unsub')}`;
  const other = `/topic/${uniq('unsub-other')}`;
  const s1 = await subscribeWithReceipt(c.client, dest);
  const s2 = await subscribeWithReceipt(c.client, other);
  await publishWithReceipt(c.client, { destination: dest, body: 'one' });
  await s1.inbox.waitCount(1);
  s1.sub.unsubscribe({ receipt: 'unsub-rcpt-' + uniq() }); // receipt watched implicitly below
  // Barrier: a SEND with receipt on the same connection is processed after the UNSUBSCRIBE.
  await publishWithReceipt(c.client, { destination: other, body: 'barrier0' });
  await publishWithReceipt(c.client, { destination: dest, body: 'two' });
  await publishWithReceipt(c.client, { destination: other, body: 'barrier' });
  await s2.inbox.waitMatch((m) => m.body === 'barrier');
  assert.deepEqual(s1.inbox.items.map((m) => m.body), ['one']);
});

test('queue buffers messages while it has no consumer', async () => {
  const c = await connect();
  const q = `/queue/${uniq('buffered')}`;
  for (let i = 0; i < 5; i++) c.client.publish({ destination: q, body: `m${i}` });
  await publishWithReceipt(c.client, { destination: q, body: 'm5' });
  const { inbox } = await subscribeWithReceipt(c.client, q);
  const got = await inbox.waitCount(6);
  assert.deepEqual(got.map((m) => m.body), ['m0', 'm1', 'm2', 'm3', 'm4', 'm5'], 'in publish order');
});

test('queue: two stomp.js consumers share messages round robin', async () => {
  const a = await connect({ name: 'rr-a' });
  const b = await connect({ name: 'rr-b' });
  const p = await connect({ name: 'rr-pub' });
  const q = `/queue/${uniq('rr')}`;
  const sa = await subscribeWithReceipt(a.client, q);
  const sb = await subscribeWithReceipt(b.client, q);
  const N = 10;
  for (let i = 0; i < N - 1; i++) p.client.publish({ destination: q, body: `m${i}` });
  await publishWithReceipt(p.client, { destination: q, body: `m${N - 1}` });
  const { waitFor } = await import('../lib/stomp.mjs');
  await waitFor(() => sa.inbox.length + sb.inbox.length >= N, { what: `${N} messages across both consumers (a=${sa.inbox.length}, b=${sb.inbox.length})` });
  const ba = sa.inbox.items.map((m) => m.body);
  const bb = sb.inbox.items.map((m) => m.body);
  assert.equal(ba.length + bb.length, N, 'no duplicates');
  assert.deepEqual([...ba, ...bb].sort(), Array.from({ length: N }, (_, i) => `m${i}`).sort(), 'every message once');
  assert.equal(ba.length, N / 2, `round robin: a got ${JSON.stringify(ba)}, b got ${JSON.stringify(bb)}`);
  assert.equal(bb.length, N / 2, `round robin: a got ${JSON.stringify(ba)}, b got ${JSON.stringify(bb)}`);
});
