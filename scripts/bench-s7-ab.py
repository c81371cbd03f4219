#!/usr/bin/env python3
"""S7 A/B: cross-node latency (publisher on node1, subscriber on node2) of a 3-node cluster
(scripts/cluster.sh) under two or more settings, interleaved A,B,A,B,... on one machine state.

Usage (from the repository root, release binaries built):
  python3 scripts/bench-s7-ab.py --variant 'base:' --variant 'zgc:kafka_gc=-XX:+UseZGC' \
      [--rounds 2] [--rate 5000] [--duration 10] [--warmup 2]

A variant is NAME:SETTINGS, SETTINGS a ';'-separated list of
  kafka_heap=<KAFKA_HEAP_OPTS>   kafka_gc=<KAFKA_GC_OPTS>   kafka_props=<prop=v,prop=v>
  producer.<librdkafka prop>=<v> consumer.<librdkafka prop>=<v>   ([cluster.producer|consumer])
  workers=<TOKIO_WORKER_THREADS for every node>
Kafka is restarted (same ports and data) when its settings change between runs, the three nodes
when theirs do. Each run prints the load generator's p50/p99/p99.9/max and, from the nodes'
stomp_cluster_relay_latency_seconds histograms (delta over the run), each hop's p50/p99
(bucket-interpolated), plus Kafka's GC count and time during the run (jstat).
The processes get their own scheduler autogroups with nice --nice (default -10), like
scripts/bench-lib.sh, against other work on a shared machine. Traffic stays on 127.0.0.1.
"""
import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
LOADGEN = os.path.join(TARGET, "release", "loadgen")
BROKER = os.path.join(TARGET, "release", "stomp-broker")
H = "stomp_cluster_relay_latency_seconds"


def log(*a):
    print("[s7-ab]", *a, file=sys.stderr, flush=True)


def parse_variant(v):
    name, _, rest = v.partition(":")
    s = {}
    for item in filter(None, (x.strip() for x in rest.split(";"))):
        k, _, val = item.partition("=")
        s[k.strip()] = val.strip()
    return name, s


def kafka_part(s):
    return {k: v for k, v in s.items() if k.startswith("kafka_")}


def node_part(s):
    return {k: v for k, v in s.items() if not k.startswith("kafka_")}


def renice(pid, nice):
    try:
        with open(f"/proc/{pid}/autogroup", "w") as f:
            f.write(str(nice))
    except OSError:
        pass


def sh(*args, env=None, check=True):
    return subprocess.run(args, cwd=ROOT, env=env, check=check, text=True,
                          stdout=subprocess.PIPE).stdout


def metrics(http):
    with urllib.request.urlopen(f"{http}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = re.match(rf'^{H}_bucket\{{stage="(\w+)",le="([^"]+)"\}} (\d+)', line)
        if m:
            le = float("inf") if m.group(2) == "+Inf" else float(m.group(2))
            out.setdefault(m.group(1), []).append((le, int(m.group(3))))
    return out


def quantile(before, after, stage, q):
    a = after.get(stage, [])
    b = dict(before.get(stage, []))
    cum = [(le, n - b.get(le, 0)) for le, n in a]
    if not cum or cum[-1][1] == 0:
        return None
    total = cum[-1][1]
    rank = q * total
    prev_le, prev_n = 0.0, 0
    for le, n in cum:
        if n >= rank:
            if le == float("inf"):
                return prev_le * 1000
            frac = (rank - prev_n) / max(n - prev_n, 1)
            return (prev_le + (le - prev_le) * frac) * 1000
        prev_le, prev_n = le, n
    return None


def jstat(pid):
    try:
        out = sh("jstat", "-gcutil", str(pid), check=False).split("\n")
        cols = dict(zip(out[0].split(), out[1].split()))
        return {k: float(cols[k]) for k in ("YGC", "YGCT", "FGC", "FGCT", "CGC", "CGCT", "GCT")
                if k in cols and cols[k] != "-"}
    except Exception:  # noqa: BLE001 - diagnostics only
        return {}


def cpu_s(pid):
    """CPU seconds (user + system) a process has used so far."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", action="append", required=True)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--body", type=int, default=200)
    ap.add_argument("--nice", type=int, default=-10)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    variants = [parse_variant(v) for v in a.variant]
    # SIGTERM (e.g. `timeout`) runs the cleanup below like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if a.nice:
        renice("self", a.nice)
    work = tempfile.mkdtemp(prefix="s7-ab.")
    tag = f"s7ab-{os.getpid()}-{int(time.time())}"
    env = dict(os.environ)
    env.pop("KAFKA_BOOTSTRAP", None)  # a private Kafka, not a shared one
    env.update(CLUSTER_DIR=os.path.join(work, "cluster"), STOMP_BROKER_BIN=BROKER,
               KAFKA_DIR=os.path.join(work, "kafka"),
               KAFKA_LIBS=env.get("KAFKA_LIBS", os.path.join(ROOT, ".kafka", "libs")))
    out = a.out or os.path.join(work, "rows.jsonl")
    cfg = os.path.join(work, "node.toml")
    cur_kafka, cur_node = None, None
    rows = []

    def kafka_env(s):
        e = dict(env)
        if "kafka_heap" in s:
            e["KAFKA_HEAP_OPTS"] = s["kafka_heap"]
        if "kafka_gc" in s:
            e["KAFKA_GC_OPTS"] = s["kafka_gc"]
        if "kafka_props" in s:
            e["KAFKA_EXTRA_PROPERTIES"] = s["kafka_props"].replace(",", ";")
        return e

    def node_env(s):
        e = dict(env)
        with open(cfg, "w") as f:
            f.write(f'[cluster]\ntopic = "{tag}"\n')
            for sect in ("producer", "consumer"):
                f.write(f"[cluster.{sect}]\n")
                for k, v in s.items():
                    if k.startswith(sect + "."):
                        f.write(f'"{k[len(sect) + 1:]}" = "{v}"\n')
        e["CLUSTER_CONFIG"] = cfg
        if "workers" in s:
            e["TOKIO_WORKER_THREADS"] = s["workers"]
        else:
            e.pop("TOKIO_WORKER_THREADS", None)
        return e

    def pids():
        d = env["CLUSTER_DIR"]
        p = {n: int(open(f"{d}/{n}.pid").read()) for n in ("node1", "node2", "node3")}
        p["kafka"] = int(open(os.path.join(env["KAFKA_DIR"], "kafka.pid")).read())
        return p

    def cluster_env():
        d = dict(line.split("=", 1) for line in
                 open(os.path.join(env["CLUSTER_DIR"], "env")).read().split() if "=" in line)
        return d

    try:
        for rnd in range(1, a.rounds + 1):
            for name, s in variants:
                k, n = kafka_part(s), node_part(s)
                if cur_kafka is None:
                    e = node_env(n)
                    e.update({x: y for x, y in kafka_env(k).items() if x.startswith("KAFKA_")})
                    log(f"starting cluster ({name})")
                    sh("bash", "scripts/cluster.sh", "start", env=e)
                    cur_kafka, cur_node = k, n
                else:
                    if k != cur_kafka:
                        log(f"restarting Kafka for {name}: {k}")
                        sh("bash", "scripts/kafka.sh", "restart", env=kafka_env(k))
                        cur_kafka = k
                        cur_node = None  # reconnect cleanly
                    if n != cur_node:
                        log(f"restarting nodes for {name}: {n}")
                        e = node_env(n)
                        for node in ("node1", "node2", "node3"):
                            sh("bash", "scripts/cluster.sh", "restart", node, env=e)
                        cur_node = n
                p = pids()
                if a.nice:
                    for pid in p.values():
                        renice(pid, a.nice)
                ce = cluster_env()
                n1, n2 = ce["CLUSTER_NODE1_HTTP"], ce["CLUSTER_NODE2_HTTP"]
                ws = lambda h: "ws://" + h.removeprefix("http://") + "/ws"  # noqa: E731
                m1, m2 = metrics(n1), metrics(n2)
                g0 = jstat(p["kafka"])
                c0 = {k: cpu_s(v) for k, v in p.items()}
                t0 = time.monotonic()
                load0 = os.getloadavg()
                label = f"{name} round={rnd}"
                subprocess.run([LOADGEN, "--warmup", str(a.warmup), "--duration", str(a.duration),
                                "--json", out, "--label", label, "--ws-url", ws(n1), "s7", "--rate",
                                str(a.rate), "--body", str(a.body), "--sub-url", ws(n2),
                                "--topic", f"/topic/ab.{name}.{rnd}"],
                               check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
                g1 = jstat(p["kafka"])
                wall = time.monotonic() - t0
                cpu = {k: round((cpu_s(v) - c0[k]) / wall * 100) for k, v in p.items()}
                m1b, m2b = metrics(n1), metrics(n2)
                r = [json.loads(x) for x in open(out) if x.strip()][-1]
                row = {
                    "variant": name, "round": rnd, "load1": round(os.getloadavg()[0], 2),
                    "load1_before": round(load0[0], 2),
                    "p50": r.get("p50_us", 0) / 1000, "p99": r.get("p99_us", 0) / 1000,
                    "p999": r.get("p999_us", 0) / 1000, "max": r.get("max_us", 0) / 1000,
                    "lost": r.get("lost"),
                    "ack_p50": quantile(m1, m1b, "produce_ack", 0.5),
                    "ack_p99": quantile(m1, m1b, "produce_ack", 0.99),
                    "consume_p50": quantile(m2, m2b, "consume", 0.5),
                    "consume_p99": quantile(m2, m2b, "consume", 0.99),
                    "deliver_p99": quantile(m2, m2b, "deliver", 0.99),
                    "gc_n": (g1.get("YGC", 0) + g1.get("FGC", 0) + g1.get("CGC", 0))
                    - (g0.get("YGC", 0) + g0.get("FGC", 0) + g0.get("CGC", 0)),
                    "gc_ms": (g1.get("GCT", 0) - g0.get("GCT", 0)) * 1000,
                    "cpu_pct": cpu,
                }
                rows.append(row)
                f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
                log(f"{label}: p50 {f(row['p50'])} p99 {f(row['p99'])} p99.9 {f(row['p999'])} "
                    f"max {f(row['max'])} | ack p99 {f(row['ack_p99'])} consume p50/p99 "
                    f"{f(row['consume_p50'])}/{f(row['consume_p99'])} deliver p99 "
                    f"{f(row['deliver_p99'])} | kafka gc {row['gc_n']:.0f} × {row['gc_ms']:.0f} ms"
                    f" | load {row['load1_before']}→{row['load1']} | cpu % {cpu}")
    finally:
        subprocess.run(["bash", "scripts/cluster.sh", "stop"], cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(["bash", "scripts/kafka.sh", "reset"], cwd=ROOT, env=env,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    f = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"S7 A/B, cross node, {a.rate}/s, {a.duration} s per run after {a.warmup} s warm-up")
    print("| variant | round | p50 ms | p99 ms | p99.9 ms | max ms | ack p99 | consume p50 | "
          "consume p99 | deliver p99 | Kafka GCs (ms) | load 1m before→after |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['round']} | {f(r['p50'])} | {f(r['p99'])} | {f(r['p999'])} | "
              f"{f(r['max'])} | {f(r['ack_p99'])} | {f(r['consume_p50'])} | {f(r['consume_p99'])} | "
              f"{f(r['deliver_p99'])} | {r['gc_n']:.0f} ({r['gc_ms']:.0f}) | "
              f"{r['load1_before']}→{r['load1']} |")
    json.dump(rows, open(os.path.join(work, "rows.json"), "w"))
    log(f"rows: {work}/rows.json")


if __name__ == "__main__":
    main()
