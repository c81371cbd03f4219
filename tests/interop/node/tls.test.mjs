// stomp.js over wss:// against the broker's HTTPS listener, with a
// certificate generated for this test run (openssl), and the WebSocket
// Origin allow-list seen from a real client.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startBroker } from '../lib/broker.mjs';
import { WebSocket, subscribeWithReceipt, publishWithReceipt, SUBPROTOCOLS } from '../lib/stomp.mjs';

let broker;
let certPem;

before(async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'stomp-tls-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
    '-nodes', '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', key, '-out', cert], { stdio: 'ignore' });
  certPem = readFileSync(cert);
  broker = await startBroker({
    extraArgs: ['--https-listen', '127.0.0.1:0', '--tls-cert', cert, '--tls-key', key],
  });
  const ports = JSON.parse(readFileSync(broker.portFile, 'utf8'));
  broker.https = ports.https;
});

after(async () => { if (broker) await broker.stop(); });

test('stomp.js publishes and subscribes over wss:// with a verified certificate', async () => {
  assert.ok(broker.https, 'the port file names the https listener');
  const url = `wss://localhost:${broker.https.split(':')[1]}/ws`;
  const sub = await connectStompTls(url);
  const { inbox } = await subscribeWithReceipt(sub.client, '/topic/tls.check');
  const pub = await connectStompTls(url);
  await publishWithReceipt(pub.client, { destination: '/topic/tls.check', body: 'over wss' });
  const [m] = await inbox.waitCount(1);
  assert.equal(m.body, 'over wss');
  await sub.client.deactivate();
  await pub.client.deactivate();
});

test('a WebSocket from a foreign Origin is refused with 403', async () => {
  const status = await new Promise((resolve) => {
    const ws = new WebSocket(broker.wsUrl, SUBPROTOCOLS, { origin: 'https://evil.example' });
    ws.on('unexpected-response', (_req, res) => resolve(res.statusCode));
    ws.on('open', () => { ws.close(); resolve(101); });
    ws.on('error', () => {});
  });
  assert.equal(status, 403);
});

async function connectStompTls(url) {
  const { Client } = await import('@stomp/stompjs');
  const client = new Client({
    webSocketFactory: () => new WebSocket(url, SUBPROTOCOLS, { ca: certPem, servername: 'localhost' }),
    reconnectDelay: 0,
    heartbeatIncoming: 0,
    heartbeatOutgoing: 0,
  });
  const connected = new Promise((resolve, reject) => {
    client.onConnect = resolve;
    client.onStompError = (f) => reject(new Error(f.headers.message));
    client.onWebSocketError = (e) => reject(new Error(`websocket error ${e?.message ?? ''}`));
  });
  client.activate();
  await connected;
  return { client };
}
