// stomp.js over sockjs-client (its Node drivers) against the broker's SockJS endpoint, one
// case per transport: subscribe, publish, receive, and a message larger than 64 KiB (which
// crosses xhr-streaming's 128 KiB response limit when sent a few times).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import SockJS from 'sockjs-client';
import { Client } from '@stomp/stompjs';
import { startBroker } from '../lib/broker.mjs';
import { subscribeWithReceipt, publishWithReceipt, uniq, withTimeout } from '../lib/stomp.mjs';

let broker;
before(async () => { broker = await startBroker(); });
after(async () => { if (broker) await broker.stop(); });

async function connectSockJs(transport) {
  let sock = null;
  const client = new Client({
    webSocketFactory: () => {
      sock = new SockJS(`${broker.httpUrl}/sockjs`, null, { transports: [transport] });
      return sock;
    },
    connectHeaders: { login: 'guest', passcode: 'guest' },
    reconnectDelay: 0,
    heartbeatIncoming: 10000,
    heartbeatOutgoing: 10000,
    debug: () => {},
  });
  const connected = new Promise((resolve, reject) => {
    client.onConnect = resolve;
    client.onStompError = (f) => reject(new Error(`ERROR: ${f.headers.message}`));
    client.onWebSocketClose = (e) => reject(new Error(`closed before CONNECTED: ${e.code} ${e.reason}`));
  });
  client.activate();
  await withTimeout(connected, 10000, `CONNECTED over SockJS ${transport}`);
  return { client, sock };
}

for (const [transport, name] of [
  ['websocket', 'websocket'],
  ['xhr-streaming', 'xhr-streaming'],
  ['xhr-polling', 'xhr-polling'],
  ['eventsource', 'eventsource'],
]) {
  test(`SockJS ${transport}: subscribe, publish, receive, and messages over 64 KiB`, async () => {
    const { client, sock } = await connectSockJs(transport);
    try {
      assert.equal(sock.transport, name, 'the transport in use');
      const dest = `/topic/${uniq('sockjs')}`;
      const { inbox } = await subscribeWithReceipt(client, dest);
      await publishWithReceipt(client, { destination: dest, body: 'hello ✓ "quoted" \\ back' });
      const [m] = await inbox.waitCount(1);
      assert.equal(m.body, 'hello ✓ "quoted" \\ back');
      const big = 'x'.repeat(70 * 1024) + 'é\u2028end';
      for (let i = 0; i < 3; i++) {
        await publishWithReceipt(client, { destination: dest, body: `${i}:${big}` });
        const b = (await inbox.waitCount(i + 2, 10000))[i + 1];
        assert.equal(b.body.length, `${i}:${big}`.length);
        assert.equal(b.body, `${i}:${big}`);
      }
    } finally {
      await client.deactivate();
    }
  });
}

test('SockJS sessions are counted by transport in /metrics', async () => {
  const res = await fetch(`${broker.httpUrl}/metrics`);
  const text = await res.text();
  for (const t of ['websocket', 'xhr_streaming', 'xhr', 'eventsource']) {
    assert.match(text, new RegExp(`stomp_sockjs_sessions_total\\{transport="${t}"\\} [1-9]`), t);
  }
});
