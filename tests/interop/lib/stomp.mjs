// Client-side helpers for the interop tests: stomp.js over the `ws` package, condition
// waiting, inboxes, and a raw STOMP-over-WebSocket client for protocol-level checks.
import { Client } from '@stomp/stompjs';
import WebSocket from 'ws';

// Node 20 has no global WebSocket; stomp.js only uses our factory, but make it visible anyway.
if (typeof globalThis.WebSocket === 'undefined') Object.assign(globalThis, { WebSocket });

export { WebSocket };
export const SUBPROTOCOLS = ['v12.stomp', 'v11.stomp', 'v10.stomp'];
const VERBOSE = !!process.env.STOMP_INTEROP_VERBOSE;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

let counter = 0;
/** A unique name segment without dots (dots separate topic segments). */
export function uniq(prefix = 'x') {
  counter += 1;
  return `${prefix}-${process.pid}-${Date.now().toString(36)}-${counter}-${Math.random().toString(36).slice(2, 8)}`;
}

/** Reject after `ms` with a message naming what we were waiting for. */
export function withTimeout(promise, ms, what) {
  let t;
  const timeout = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(t));
}

/** Poll `cond` until it returns a truthy value (which is returned). */
export async function waitFor(cond, { timeout = 5000, interval = 10, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await sleep(interval);
  }
}

/** Collects items (messages, frames) and lets tests await them. */
export class Inbox {
  constructor(name = 'inbox') {
    this.name = name;
    this.items = [];
    this.waiters = [];
  }
  push(item) {
    this.items.push(item);
    for (const w of [...this.waiters]) w();
  }
  get length() { return this.items.length; }
  /** Wait until at least n items arrived; returns the first n. */
  async waitCount(n, timeout = 5000) {
    await this._until(() => this.items.length >= n, timeout, `${n} item(s) in ${this.name} (have ${this.items.length})`);
    return this.items.slice(0, n);
  }
  /** Wait for an item matching pred; returns it. */
  async waitMatch(pred, timeout = 5000, what = 'a matching item') {
    let found;
    await this._until(() => (found = this.items.find(pred)) !== undefined, timeout, `${what} in ${this.name}`);
    return found;
  }
  _until(check, timeout, what) {
    if (check()) return Promise.resolve();
    return withTimeout(new Promise((resolve) => {
      const w = () => {
        if (check()) {
          this.waiters = this.waiters.filter((x) => x !== w);
          resolve();
        }
      };
      this.waiters.push(w);
    }), timeout, what).catch((e) => {
      this.waiters = [];
      throw e;
    });
  }
}

/**
 * Create and activate a stomp.js client over `ws`; resolves once CONNECTED arrived.
 * Returned object: { client, connected (CONNECTED frame), state } where state.ws is the
 * current WebSocket, state.wsMessages records every incoming WebSocket message
 * ({ isBinary, data: Buffer }), state.errors the ERROR frames, state.closes the close events.
 */
export async function connectStomp(url, opts = {}) {
  const state = {
    ws: null,
    wsMessages: [],
    errors: [],
    closes: [],
    connects: 0,
    heartbeatsReceived: 0,
    heartbeatsLost: 0,
  };
  const client = new Client({
    webSocketFactory: () => {
      const ws = new WebSocket(opts.url ?? url, opts.protocols ?? SUBPROTOCOLS);
      ws.on('message', (data, isBinary) => {
        state.wsMessages.push({ isBinary, data: Buffer.from(data) });
      });
      state.ws = ws;
      return ws;
    },
    connectHeaders: { login: 'guest', passcode: 'guest', ...(opts.connectHeaders ?? {}) },
    reconnectDelay: opts.reconnectDelay ?? 0,
    heartbeatIncoming: opts.heartbeatIncoming ?? 10000,
    heartbeatOutgoing: opts.heartbeatOutgoing ?? 10000,
    debug: VERBOSE ? (s) => process.stderr.write(`[stompjs ${opts.name ?? ''}] ${s}\n`) : () => {},
  });
  if (opts.stompVersions) client.stompVersions = opts.stompVersions;
  if (opts.heartbeatToleranceMultiplier) client.heartbeatToleranceMultiplier = opts.heartbeatToleranceMultiplier;
  const first = new Promise((resolve, reject) => {
    client.onConnect = (frame) => {
      state.connects += 1;
      state.lastConnected = frame;
      if (opts.onConnect) opts.onConnect(frame, client, state);
      resolve(frame);
    };
    client.onStompError = (frame) => {
      state.errors.push(frame);
      if (state.connects === 0) reject(new Error(`ERROR frame before CONNECTED: ${frame.headers.message} ${frame.body}`));
    };
    client.onWebSocketClose = (evt) => {
      state.closes.push({ code: evt.code, reason: evt.reason, at: Date.now() });
      if (state.connects === 0 && !opts.reconnectDelay) reject(new Error(`WebSocket closed before CONNECTED (code ${evt.code})`));
    };
    client.onWebSocketError = () => {};
  });
  client.onHeartbeatReceived = () => { state.heartbeatsReceived += 1; };
  client.onHeartbeatLost = () => { state.heartbeatsLost += 1; };
  client.activate();
  let connected;
  try {
    connected = await withTimeout(first, opts.timeout ?? 10000, `CONNECTED from ${url}`);
  } catch (e) {
    await client.deactivate({ force: true }).catch(() => {});
    throw e;
  }
  return {
    client,
    connected,
    state,
    close: () => client.deactivate(),
    /** The recorded incoming WebSocket message whose bytes contain `marker`. */
    wsMessageContaining(marker) {
      const m = Buffer.from(marker, 'utf8');
      return state.wsMessages.find((x) => x.data.includes(m));
    },
  };
}

/** A promise for the RECEIPT with this id (register before sending the frame). */
export function receiptPromise(client, receiptId, timeout = 5000) {
  return withTimeout(new Promise((resolve) => client.watchForReceipt(receiptId, resolve)), timeout, `RECEIPT ${receiptId}`);
}

/** SUBSCRIBE with a receipt header and wait for the RECEIPT. Messages go to the returned inbox. */
export async function subscribeWithReceipt(client, destination, headers = {}, name = destination) {
  const inbox = new Inbox(`subscription to ${name}`);
  const receipt = uniq('sub-rcpt');
  const got = receiptPromise(client, receipt);
  const sub = client.subscribe(destination, (m) => inbox.push(m), { ...headers, receipt });
  await got;
  return { sub, inbox };
}

/** SEND with a receipt header and wait for the RECEIPT. */
export async function publishWithReceipt(client, params) {
  const receipt = uniq('send-rcpt');
  const got = receiptPromise(client, receipt);
  client.publish({ ...params, headers: { ...(params.headers ?? {}), receipt } });
  return got;
}

// ---------------------------------------------------------------------------------------------
// Raw STOMP over WebSocket

/** Serialize a frame (headers are written as given: escape them yourself if needed). */
export function encodeFrame(command, headers = {}, body = '') {
  const head = [command, ...Object.entries(headers).map(([k, v]) => `${k}:${v}`)].join('\n');
  return Buffer.concat([Buffer.from(`${head}\n\n`, 'utf8'), Buffer.isBuffer(body) ? body : Buffer.from(body, 'utf8'), Buffer.from([0])]);
}

/** Incremental STOMP frame parser: feed() bytes, get { command, headers, rawHeaders, body } frames. */
export class FrameParser {
  constructor(onFrame, onHeartbeat = () => {}) {
    this.buf = Buffer.alloc(0);
    this.onFrame = onFrame;
    this.onHeartbeat = onHeartbeat;
  }
  feed(chunk) {
    this.buf = Buffer.concat([this.buf, chunk]);
    for (;;) {
      // EOLs between frames are heart-beats.
      while (this.buf.length && (this.buf[0] === 0x0a || (this.buf[0] === 0x0d && this.buf[1] === 0x0a))) {
        this.buf = this.buf.subarray(this.buf[0] === 0x0a ? 1 : 2);
        this.onHeartbeat();
      }
      if (!this.buf.length) return;
      const sep = this.buf.indexOf('\n\n');
      const sepCr = this.buf.indexOf('\r\n\r\n');
      let headEnd, bodyStart;
      if (sepCr >= 0 && (sep < 0 || sepCr < sep)) { headEnd = sepCr; bodyStart = sepCr + 4; }
      else if (sep >= 0) { headEnd = sep; bodyStart = sep + 2; }
      else return;
      const lines = this.buf.subarray(0, headEnd).toString('utf8').split(/\r?\n/);
      const command = lines.shift();
      const rawHeaders = lines.map((l) => { const i = l.indexOf(':'); return [l.slice(0, i), l.slice(i + 1)]; });
      const headers = {};
      for (const [k, v] of rawHeaders) if (!(k in headers)) headers[k] = v;
      let body, end;
      if (headers['content-length'] !== undefined) {
        const n = Number(headers['content-length']);
        if (this.buf.length < bodyStart + n + 1) return;
        body = this.buf.subarray(bodyStart, bodyStart + n);
        end = bodyStart + n + 1;
      } else {
        const nul = this.buf.indexOf(0, bodyStart);
        if (nul < 0) return;
        body = this.buf.subarray(bodyStart, nul);
        end = nul + 1;
      }
      this.buf = this.buf.subarray(end);
      this.onFrame({ command, headers, rawHeaders, body: Buffer.from(body) });
    }
  }
}

/** A minimal STOMP client speaking raw frames over a `ws` WebSocket. */
export class RawStompWs {
  static async open(url, protocols = SUBPROTOCOLS, timeout = 5000) {
    const ws = new WebSocket(url, protocols);
    const raw = new RawStompWs(ws);
    await withTimeout(new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    }), timeout, `WebSocket open ${url}`);
    return raw;
  }
  constructor(ws) {
    this.ws = ws;
    this.frames = new Inbox('raw frames');
    this.heartbeats = [];
    this.wsMessages = [];
    this.parser = new FrameParser((f) => this.frames.push(f), () => this.heartbeats.push(Date.now()));
    this.closeInfo = null;
    this.closed = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.closeInfo = { code, reason: reason.toString(), at: Date.now() };
        resolve(this.closeInfo);
      });
    });
    ws.on('error', () => {});
    ws.on('message', (data, isBinary) => {
      const b = Buffer.from(data);
      this.wsMessages.push({ isBinary, data: b });
      this.parser.feed(b);
    });
  }
  get protocol() { return this.ws.protocol; }
  send(command, headers = {}, body = '', { binary = false } = {}) {
    const f = encodeFrame(command, headers, body);
    this.ws.send(binary ? f : f.toString('utf8'), { binary });
  }
  sendRaw(data, { binary = false } = {}) { this.ws.send(data, { binary }); }
  async connect(headers = {}) {
    this.send('CONNECT', { 'accept-version': '1.2,1.1,1.0', host: '/', login: 'guest', passcode: 'guest', 'heart-beat': '0,0', ...headers });
    const f = await this.frames.waitCount(1, 5000);
    return f[0];
  }
  close() { try { this.ws.terminate(); } catch { /* ignore */ } }
}
