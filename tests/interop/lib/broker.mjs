// Start / stop the stomp-broker binary for the interop tests.
//
// The binary is $STOMP_BROKER_BIN, or target/debug/stomp-broker relative to the repo root.
// Each broker listens on 127.0.0.1:0 (or explicit addresses, for restarts on the same ports)
// and reports its ports through --port-file, which we poll for.
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');

export function brokerBin() {
  const bin = process.env.STOMP_BROKER_BIN || 'target/debug/stomp-broker';
  return path.isAbsolute(bin) ? bin : path.resolve(REPO_ROOT, bin);
}

const running = new Set();
function killAll() {
  for (const b of running) {
    try { b.proc.kill('SIGKILL'); } catch { /* already gone */ }
  }
}
process.on('exit', killAll);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Start a broker.
 * @param {object} [opts]
 * @param {string} [opts.stompListen]  default 127.0.0.1:0
 * @param {string} [opts.httpListen]   default 127.0.0.1:0
 * @param {string} [opts.heartBeat]    e.g. '200,200' (→ --heart-beat)
 * @param {string[]} [opts.extraArgs]
 * @param {number} [opts.startTimeoutMs] default 20000
 * @returns {Promise<Broker>}
 */
export async function startBroker(opts = {}) {
  const bin = brokerBin();
  if (!existsSync(bin)) {
    throw new Error(`broker binary not found: ${bin} (build it with 'cargo build -p stomp-broker' or set STOMP_BROKER_BIN)`);
  }
  const dir = mkdtempSync(path.join(tmpdir(), 'stomp-interop-'));
  const portFile = path.join(dir, 'ports.json');
  const args = [
    '--stomp-listen', opts.stompListen ?? '127.0.0.1:0',
    '--http-listen', opts.httpListen ?? '127.0.0.1:0',
    '--port-file', portFile,
  ];
  if (opts.heartBeat) args.push('--heart-beat', opts.heartBeat);
  if (opts.extraArgs) args.push(...opts.extraArgs);

  const proc = spawn(bin, args, {
    cwd: REPO_ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { RUST_LOG: process.env.RUST_LOG ?? 'info', ...process.env, ...(opts.env ?? {}) },
  });
  const log = [];
  const verbose = !!process.env.STOMP_INTEROP_VERBOSE;
  const onData = (name) => (chunk) => {
    for (const line of chunk.toString('utf8').split('\n')) {
      if (!line) continue;
      log.push(`[${name}] ${line}`);
      if (log.length > 400) log.shift();
      if (verbose) process.stderr.write(`[broker ${proc.pid} ${name}] ${line}\n`);
    }
  };
  proc.stdout.on('data', onData('out'));
  proc.stderr.on('data', onData('err'));

  let exitInfo = null;
  const exited = new Promise((resolve) => {
    proc.on('exit', (code, signal) => {
      exitInfo = { code, signal };
      resolve(exitInfo);
    });
    proc.on('error', (err) => {
      exitInfo = { code: null, signal: null, error: err };
      resolve(exitInfo);
    });
  });

  const broker = {
    proc,
    args,
    portFile,
    log,
    exited,
    get exitInfo() { return exitInfo; },
    logs() { return log.join('\n'); },
    /** SIGTERM, wait for exit (SIGKILL after timeoutMs). Resolves {code, signal, killed}. */
    async stop(timeoutMs = 10000) {
      running.delete(broker);
      if (!exitInfo) {
        proc.kill('SIGTERM');
        let timer;
        const t = await Promise.race([exited, new Promise((r) => { timer = setTimeout(() => r(null), timeoutMs); })]);
        clearTimeout(timer);
        if (!t) {
          proc.kill('SIGKILL');
          const info = await exited;
          rmSync(dir, { recursive: true, force: true });
          return { ...info, killed: true };
        }
      }
      rmSync(dir, { recursive: true, force: true });
      return { ...exitInfo, killed: false };
    },
  };
  running.add(broker);

  const deadline = Date.now() + (opts.startTimeoutMs ?? 20000);
  let ports = null;
  while (Date.now() < deadline) {
    if (exitInfo) break;
    try {
      ports = JSON.parse(readFileSync(portFile, 'utf8'));
      if (ports && ports.stomp && ports.http) break;
      ports = null;
    } catch { /* not there yet, or partially written */ }
    await sleep(20);
  }
  if (!ports) {
    await broker.stop(2000);
    throw new Error(
      `broker did not write its port file ${portFile} ` +
      (exitInfo ? `(exited: ${JSON.stringify(exitInfo)})` : '(timeout)') +
      `\nargs: ${args.join(' ')}\n--- broker output ---\n${broker.logs()}`);
  }
  const portOf = (addr) => Number(String(addr).split(':').pop());
  Object.assign(broker, {
    stompAddr: ports.stomp,
    httpAddr: ports.http,
    stompPort: portOf(ports.stomp),
    httpPort: portOf(ports.http),
    wsUrl: `ws://${ports.http}/ws`,
    httpUrl: `http://${ports.http}`,
  });
  return broker;
}

/**
 * Start a broker on explicit ports (e.g. a restart on the ports a previous broker had).
 * Retries a few times if the ports are momentarily unavailable.
 */
export async function startBrokerOn(stompPort, httpPort, opts = {}) {
  let lastErr;
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      return await startBroker({
        ...opts,
        stompListen: `127.0.0.1:${stompPort}`,
        httpListen: `127.0.0.1:${httpPort}`,
      });
    } catch (e) {
      lastErr = e;
      await sleep(200 * (attempt + 1));
    }
  }
  throw lastErr;
}
