#!/usr/bin/env python3
"""Issue 12 (trust under faults and hostile clients): old binary vs new binary.

Runs five scenarios against each of two stomp-broker release binaries, a fresh
broker per scenario (config written to a temp dir, addresses read from its
[listen] port_file), and prints one Markdown table: scenario, old, new.

 1. tx:     200 x 512 KiB SENDs in one open transaction; accepted or ERROR;
            VmRSS before/after and VmHWM (/proc/PID/status).
 2. queues: 1 KiB SENDs to 20,000 new /queue/ destinations, then subscribe to
            each and consume; accepted/ERROR, RSS after sending and consuming.
 3. flood:  300 concurrent wrong-password CONNECTs from 127.0.0.1 (argon2 users
            file) while one correct CONNECT from 127.0.0.2 is timed; VmHWM.
 4. timing: wrong password for a known vs an unknown user, median of 20 each.
 5. http:   300 sockets trickling a header byte every 2 s plus 300 idle
            keep-alive sockets on the HTTP port; broker open fds at t=5 s and
            t=20 s. The NEW binary only gets limits.http_idle_timeout_ms =
            15000 (default 60000) so the idle close shows within 20 s; the old
            binary does not know that setting (it rejects unknown keys).

Usage: measure-bounds.py OLD_BINARY NEW_BINARY
Only listens on and connects to loopback (127.0.0.0/8). About 2-3 minutes.
Every broker it starts is stopped (SIGTERM, then SIGKILL after 5 s)."""
import asyncio, json, os, queue, signal, socket, statistics, subprocess, sys
import tempfile, threading, time
from collections import Counter

TOTAL_DEADLINE_S = 600          # hard stop for the whole run
# argon2id hash of "correct horse" (argon2 defaults: m=19456, t=2, p=1).
OPS_HASH = ("$argon2id$v=19$m=19456,t=2,p=1$CMf8OeQU6C5xpyiqdz4KmQ$"
            "rZS1oH8+FRtAkuGH0vzABDOXLrb8w59O+JdwVcnN6o8")
OPS_PASSWORD = "correct horse"
MiB = 1024 * 1024


def frame(cmd, headers=(), body=b""):
    h = "".join(f"{k}:{v}\n" for k, v in headers)
    return cmd.encode() + b"\n" + h.encode() + b"\n" + body + b"\0"


# ---------------------------------------------------------------- brokers

RUNNING = []


class Broker:
    """A broker started with --config; stop() always."""

    def __init__(self, binary, dir, toml):
        self.dir = dir
        port_file = os.path.join(self.dir, "ports.json")
        cfg = os.path.join(self.dir, "broker.toml")
        with open(cfg, "w") as f:
            f.write(toml.replace("@PORT_FILE@", port_file).replace("@DIR@", self.dir))
        self.log = open(os.path.join(self.dir, "broker.log"), "wb")
        self.p = subprocess.Popen([binary, "--config", cfg], stdin=subprocess.DEVNULL,
                                  stdout=self.log, stderr=subprocess.STDOUT)
        RUNNING.append(self)
        self.pid = self.p.pid
        deadline = time.monotonic() + 15
        while True:
            if self.p.poll() is not None:
                raise RuntimeError(f"broker exited {self.p.returncode}, see {self.dir}/broker.log")
            try:
                with open(port_file) as f:
                    ports = json.load(f)
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise RuntimeError("no port file after 15 s")
                time.sleep(0.05)
        self.ports = {}
        for k, v in ports.items():
            if v:
                host, port = v.rsplit(":", 1)
                assert host.startswith("127."), "loopback only"
                self.ports[k] = int(port)
        time.sleep(0.2)

    def status(self):
        d = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                d[k] = v.split()
        return {"rss": int(d["VmRSS"][0]) / 1024, "hwm": int(d["VmHWM"][0]) / 1024}

    def fds(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()
        if self in RUNNING:
            RUNNING.remove(self)


def stop_all(*_):
    for b in list(RUNNING):
        b.stop()
    if _:
        sys.exit("killed: brokers stopped")


# ---------------------------------------------------------------- a blocking client

class Stomp:
    """Blocking STOMP client; a reader thread collects frames, so an ERROR sent
    just before the broker closes is not lost while we are still writing."""

    def __init__(self, port, src="127.0.0.1", login=None, passcode=None, timeout=30):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                          source_address=(src, 0))
        self.frames = queue.Queue()
        self.done = False
        threading.Thread(target=self._read, daemon=True).start()
        h = [("accept-version", "1.2"), ("host", "/"), ("heart-beat", "0,0")]
        if login:
            h += [("login", login), ("passcode", passcode)]
        self.s.sendall(frame("CONNECT", h))
        f = self.get(timeout)
        if f[0] != "CONNECTED":
            raise RuntimeError(f"CONNECT: {f[0]} {f[1].get('message', '')}")

    def _read(self):
        buf = b""
        while not self.done:
            try:
                d = self.s.recv(1 << 20)
            except socket.timeout:
                continue
            except OSError:
                d = b""
            if not d:
                self.frames.put(("CLOSED", {}, b""))
                return
            buf += d
            while True:
                buf = buf.lstrip(b"\r\n")
                i = buf.find(b"\0")
                if i < 0:
                    break
                f, buf = buf[:i], buf[i + 1:]
                head, _, body = f.partition(b"\n\n")
                lines = head.decode(errors="replace").split("\n")
                hdrs = dict(l.split(":", 1) for l in lines[1:] if ":" in l)
                self.frames.put((lines[0], hdrs, body))

    def get(self, timeout=30):
        try:
            return self.frames.get(timeout=timeout)
        except queue.Empty:
            return ("TIMEOUT", {}, b"")

    def until(self, cmd, timeout=60):
        """Frames up to cmd (or ERROR/CLOSED/TIMEOUT); returns (frame, Counter of others)."""
        seen, deadline = Counter(), time.monotonic() + timeout
        while True:
            f = self.get(max(0.1, deadline - time.monotonic()))
            if f[0] in (cmd, "ERROR", "CLOSED", "TIMEOUT"):
                return f, seen
            seen[f[0]] += 1

    def error(self):
        """An ERROR or CLOSED already received (non-blocking peek), else None."""
        try:
            f = self.frames.get_nowait()
        except queue.Empty:
            return None
        return f if f[0] in ("ERROR", "CLOSED") else self.error()

    def close(self):
        self.done = True
        try:
            self.s.close()
        except OSError:
            pass


def err(f):
    return f"{f[0]} \"{f[1].get('message', '')}\"" if f[0] == "ERROR" else f[0]


def mib(x):
    return f"{x:.0f}"


# ---------------------------------------------------------------- scenarios

BASE = """[listen]
stomp = "127.0.0.1:0"
http = ""
status_page = false
port_file = "@PORT_FILE@"
[log]
level = "warn"
"""
AUTH = """[auth]
users_file = "@DIR@/users.toml"
"""


def s_tx(b):
    before = b.status()
    c = Stomp(b.ports["stomp"])
    c.s.sendall(frame("BEGIN", [("transaction", "t")]))
    body = b"x" * (512 * 1024)
    sent, f = 0, None
    for _ in range(200):
        f = c.error()
        if f:
            break
        try:
            c.s.sendall(frame("SEND", [("destination", "/topic/tx"), ("transaction", "t"),
                                       ("content-length", len(body))], body))
            sent += 1
        except OSError:
            break
    if not f:
        try:
            c.s.sendall(frame("SEND", [("destination", "/topic/x"), ("receipt", "sync")]))
        except OSError:
            pass
        f, _ = c.until("RECEIPT", 60)
    after = b.status()
    c.close()
    out = "all 200 accepted (tx open)" if f[0] == "RECEIPT" else f"{err(f)} after {sent} written"
    return [("1. 200 x 512 KiB SENDs in one transaction", out),
            ("1. RSS before → after, peak (MiB)",
             f"{mib(before['rss'])} → {mib(after['rss'])}, peak {mib(after['hwm'])}")]


def s_queues(b, n_q=20_000):
    before = b.status()
    c = Stomp(b.ports["stomp"])
    body = b"y" * 1024
    f, written = None, 0
    for start in range(0, n_q, 1000):
        f = c.error()
        if f:
            break
        batch = b"".join(frame("SEND", [("destination", f"/queue/q.{n}"), ("content-length", 1024)], body)
                         for n in range(start, start + 1000))
        try:
            c.s.sendall(batch)
            written += 1000
        except OSError:
            break
    if not f:
        try:
            c.s.sendall(frame("SEND", [("destination", "/topic/x"), ("receipt", "sync")]))
        except OSError:
            pass
        f, _ = c.until("RECEIPT", 60)
    after_send = b.status()
    c.close()
    sent_out = f"all {n_q:,} accepted" if f[0] == "RECEIPT" else f"{err(f)} ({written:,} written)"
    # Consume: subscribe to 1,000 queues, take what comes, unsubscribe, next 1,000.
    c2 = Stomp(b.ports["stomp"])
    consumed, problem = 0, ""
    for start in range(0, n_q, 1000):
        subs = [frame("SUBSCRIBE", [("id", str(n)), ("destination", f"/queue/q.{n}")])
                for n in range(start, start + 999)]
        subs.append(frame("SUBSCRIBE", [("id", str(start + 999)),
                                        ("destination", f"/queue/q.{start + 999}"), ("receipt", "s")]))
        c2.s.sendall(b"".join(subs))
        g, seen = c2.until("RECEIPT", 60)
        consumed += seen["MESSAGE"]
        if g[0] != "RECEIPT":
            problem = f"; consumer: {err(g)} at queue {start:,}"
            break
        unsubs = [frame("UNSUBSCRIBE", [("id", str(n))]) for n in range(start, start + 999)]
        unsubs.append(frame("UNSUBSCRIBE", [("id", str(start + 999)), ("receipt", "u")]))
        c2.s.sendall(b"".join(unsubs))
        g, seen = c2.until("RECEIPT", 60)
        consumed += seen["MESSAGE"]
        if g[0] != "RECEIPT":
            problem = f"; consumer: {err(g)} at queue {start:,}"
            break
    c2.close()
    time.sleep(1)
    after = b.status()
    return [("2. 1 KiB SENDs to 20,000 new queues", sent_out),
            ("2. messages consumed", f"{consumed:,}{problem}"),
            ("2. RSS before → after SENDs → after consuming, peak (MiB)",
             f"{mib(before['rss'])} → {mib(after_send['rss'])} → {mib(after['rss'])}, peak {mib(after['hwm'])}")]


async def a_connect(port, src, login, pw, timeout=90):
    """One CONNECT; returns (first line of the reply or error, seconds)."""
    t = time.monotonic()
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), timeout)
    except (OSError, asyncio.TimeoutError) as e:
        return type(e).__name__, time.monotonic() - t
    t = time.monotonic()
    try:
        w.write(frame("CONNECT", [("accept-version", "1.2"), ("host", "/"), ("login", login),
                                  ("passcode", pw), ("heart-beat", "0,0")]))
        await w.drain()
        data = b""
        while b"\0" not in data:
            c = await asyncio.wait_for(r.read(4096), max(0.1, timeout - (time.monotonic() - t)))
            if not c:
                break
            data += c
        res = data.lstrip(b"\r\n").split(b"\n", 1)[0].decode(errors="replace") or "closed"
    except (OSError, asyncio.TimeoutError) as e:
        res = type(e).__name__
    finally:
        w.close()
    return res, time.monotonic() - t


def s_flood(b, n=300):
    port = b.ports["stomp"]

    async def main():
        t0 = time.monotonic()
        bad = [asyncio.create_task(a_connect(port, "127.0.0.1", "ops", "wrong")) for _ in range(n)]
        await asyncio.sleep(0.3)  # let the flood land first
        good = await a_connect(port, "127.0.0.2", "ops", OPS_PASSWORD)
        res = await asyncio.gather(*bad)
        return good, Counter(r for r, _ in res), time.monotonic() - t0

    good, bad, total = asyncio.run(main())
    st = b.status()
    bad_s = ", ".join(f"{v} {k}" for k, v in bad.most_common())
    return [("3. good CONNECT (127.0.0.2) during 300 bad ones: reply, latency",
             f"{good[0]}, {good[1] * 1000:,.0f} ms"),
            ("3. the 300 bad CONNECTs: replies, all done in", f"{bad_s}; {total:.1f} s"),
            ("3. peak RSS (VmHWM, MiB)", mib(st["hwm"]))]


def s_timing(b, rounds=20):
    port = b.ports["stomp"]

    async def main():
        res = {"ops": [], "nobody": []}
        for i in range(rounds):  # own source address per round: stay under max_failures_per_address
            for user in res:
                r, dt = await a_connect(port, f"127.0.1.{i + 1}", user, "wrong")
                res[user].append(dt)
        return res

    res = asyncio.run(main())
    k, u = (statistics.median(res[x]) * 1000 for x in ("ops", "nobody"))
    return [("4. wrong password, median of 20: known / unknown user (ms)", f"{k:.1f} / {u:.1f}")]


def s_http(b, n=300, marks=(5, 20)):
    port = b.ports["http"]
    st = {"trickle_closed": 0, "idle_closed": 0}
    writers = []

    async def trickle():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        writers.append(w)
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x")
        try:
            while True:
                await w.drain()
                try:
                    d = await asyncio.wait_for(r.read(4096), 2)
                except asyncio.TimeoutError:
                    w.write(b"x")  # one more header byte every 2 s
                    continue
                if not d:
                    break
                while await r.read(4096):  # e.g. a 408: read on until closed
                    pass
                break
        except OSError:
            pass
        st["trickle_closed"] += 1

    async def idle():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        writers.append(w)
        try:
            w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            for line in head.decode(errors="replace").split("\r\n"):
                if line.lower().startswith("content-length:"):
                    await r.readexactly(int(line.split(":", 1)[1]))
            await r.read(4096)  # b"" once the broker closes the idle connection
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        st["idle_closed"] += 1

    async def main():
        base = b.fds()
        t0 = time.monotonic()
        tasks = [asyncio.create_task(trickle()) for _ in range(n)] + \
                [asyncio.create_task(idle()) for _ in range(n)]
        out = []
        for m in marks:
            await asyncio.sleep(max(0, m - (time.monotonic() - t0)))
            out.append((m, b.fds(), dict(st)))
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in writers:
            w.close()
        return base, out

    base, out = asyncio.run(main())
    rows = [("5. broker fds before the 600 HTTP sockets", str(base))]
    for m, fds, s in out:
        rows.append((f"5. broker fds at t={m} s (trickle / idle closed)",
                     f"{fds} ({s['trickle_closed']} / {s['idle_closed']})"))
    return rows


# ---------------------------------------------------------------- main

def run(binary, tmp, tag, is_new):
    users = "[[user]]\nname = \"ops\"\npassword_hash = \"" + OPS_HASH + "\"\n"
    http_cfg = BASE.replace('http = ""', 'http = "127.0.0.1:0"').replace("status_page = false\n", "")
    if is_new:
        http_cfg += "[limits]\nhttp_header_timeout_ms = 10000\nhttp_idle_timeout_ms = 15000\n"
    scenarios = [("tx", s_tx, BASE), ("queues", s_queues, BASE),
                 ("flood", s_flood, BASE + AUTH), ("timing", s_timing, BASE + AUTH),
                 ("http", s_http, http_cfg)]
    rows = []
    for name, fn, cfg in scenarios:
        t = time.monotonic()
        b = None
        try:
            d = os.path.join(tmp, f"{tag}-{name}")
            os.makedirs(d)
            with open(os.path.join(d, "users.toml"), "w") as f:
                f.write(users)
            b = Broker(binary, d, cfg)
            rows += fn(b)
        except Exception as e:  # report, go on with the next scenario
            rows.append((f"{name}: failed", f"{type(e).__name__}: {e}"))
        finally:
            if b:
                b.stop()
        print(f"# {tag} {name}: {time.monotonic() - t:.1f} s", file=sys.stderr, flush=True)
    return rows


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    old, new = (os.path.abspath(p) for p in sys.argv[1:])
    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGALRM, stop_all)
    signal.alarm(TOTAL_DEADLINE_S)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="measure-bounds-") as tmp:
        try:
            res_old = run(old, tmp, "old", False)
            res_new = run(new, tmp, "new", True)
        finally:
            stop_all()
    signal.alarm(0)
    labels = list(dict.fromkeys([k for k, _ in res_old] + [k for k, _ in res_new]))
    o, n = dict(res_old), dict(res_new)
    print("| scenario | old | new |\n|---|---|---|")
    for k in labels:
        print(f"| {k} | {o.get(k, '')} | {n.get(k, '')} |")
    print(f"\n{time.monotonic() - t0:.0f} s in all", file=sys.stderr)


if __name__ == "__main__":
    main()
