// stomp.js reconnect: the broker restarts on the same ports; the client reconnects,
// resubscribes (in onConnect) and receives again.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startBroker, startBrokerOn } from '../lib/broker.mjs';
import {
  connectStomp, receiptPromise, publishWithReceipt, uniq, waitFor, Inbox,
} from '../lib/stomp.mjs';

const brokers = [];
const clients = [];
after(async () => {
  for (const c of clients) await c.close().catch(() => {});
  for (const b of brokers) await b.stop().catch(() => {});
});

test('client reconnects to a broker restarted on the same ports and resubscribes', async () => {
  const b1 = await startBroker();
  brokers.push(b1);
  const dest = `/topic/${uniq('reconnect')}`;
  const inbox = new Inbox('reconnect subscription');
  const subscribed = [];
  const c = await connectStomp(b1.wsUrl, {
    name: 'reconnect',
    reconnectDelay: 200,
    heartbeatIncoming: 1000,
    heartbeatOutgoing: 1000,
    onConnect: (_frame, client) => {
      const receipt = uniq('resub');
      const p = receiptPromise(client, receipt, 10000);
      p.catch(() => {});
      client.subscribe(dest, (m) => inbox.push(m), { receipt });
      subscribed.push(p);
    },
  });
  clients.push(c);
  await subscribed[0];
  await publishWithReceipt(c.client, { destination: dest, body: 'before restart' });
  await inbox.waitCount(1);

  const stopped = await b1.stop();
  assert.equal(stopped.code, 0, `first broker exits 0 on SIGTERM: ${JSON.stringify(stopped)}`);
  await waitFor(() => c.state.closes.length >= 1, { timeout: 5000, what: 'the client to see the WebSocket close' });

  const b2 = await startBrokerOn(b1.stompPort, b1.httpPort);
  brokers.push(b2);
  assert.equal(b2.httpPort, b1.httpPort);
  await waitFor(() => c.state.connects >= 2, { timeout: 15000, what: 'stomp.js to reconnect' });
  await waitFor(() => subscribed.length >= 2, { timeout: 5000, what: 'resubscribe' });
  await subscribed[subscribed.length - 1];

  const pub = await connectStomp(b2.wsUrl, { name: 'reconnect-pub' });
  clients.push(pub);
  await publishWithReceipt(pub.client, { destination: dest, body: 'after restart' });
  await inbox.waitMatch((m) => m.body === 'after restart', 5000, 'message after restart');
  assert.deepEqual(inbox.items.map((m) => m.body), ['before restart', 'after restart']);
});
