#!/usr/bin/env bash
# S7 cluster benchmark (docs/benchmarks.md, "S7"): a 3-node cluster (scripts/cluster.sh: Kafka,
# node1..node3, HAProxy) of release builds, measured with `loadgen s7`:
#
#   latency   one publisher on node1, one subscriber on node1 ("same node") or on node2
#             ("cross node": node1 → Kafka cluster topic → node2), open loop at each rate in
#             RATES, RUNS runs each, same-node and cross-node interleaved within every run;
#             p50/p99/p99.9/max from the scheduled send time; every run's p99 and the worst.
#   fan-out   one publisher on node1, FANOUT_SUBS subscribers on one topic, all on node1 vs
#             spread over node1..node3; max throughput (windowed): deliveries/s, connections held.
#
# One line, from the repository root:
#   bash scripts/bench-cluster.sh
# Environment: RUNS (3), RATES ("1000 5000"), DURATION (10 s measured per run), WARMUP (2 s),
# FANOUT_SUBS (1000), BODY (200 bytes), BENCH_SKIP_BUILD=1 (use the existing binaries),
# BENCH_PROFILE (release; `debug` only for a quick check of the script itself),
# BENCH_OUT (JSON lines; default a temp file, kept and printed at the end).
# Bench-only settings (docs/benchmarks.md, "S7: where the tail comes from"):
#   BENCH_NICE (-10): this script, the nodes and Kafka each get a scheduler autogroup with this
#     nice value, as in scripts/bench-lib.sh, against other work on a shared machine (0 = off).
#   Kafka's JVM (when this script starts Kafka): KAFKA_HEAP_OPTS (-Xms1g -Xmx1g) and
#     KAFKA_GC_OPTS (G1, pause goal 20 ms, young generation at least half the heap):
#     scripts/kafka.sh's test defaults (G1, 256-512 MiB heap) let G1 shrink the young
#     generation to meet its pause goal, so at 5,000 msgs/s Kafka stops for a young collection
#     about twice a second; with >= 512 MiB of young generation it is about once per 10 s.
#     Production Kafka is sized by its operator, not by this script.
# Each cross-node run also reports the nodes' stomp_cluster_relay_latency_seconds per hop
# (produce_ack on node1, consume and deliver on node2; p99 interpolated within the histogram's
# buckets) and Kafka's GC pauses during the run (jstat), so a tail can be attributed.
# Traffic stays on 127.0.0.1. Not part of the test command.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RUNS=${RUNS:-3}
RATES=${RATES:-"1000 5000"}
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
FANOUT_SUBS=${FANOUT_SUBS:-1000}
BODY=${BODY:-200}
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET" in /*) ;; *) TARGET="$ROOT/$TARGET" ;; esac

PROFILE=${BENCH_PROFILE:-release}
if [ -z "${BENCH_SKIP_BUILD:-}" ]; then
  if [ "$PROFILE" = release ]; then cargo build --release -p stomp-broker -p loadgen
  else cargo build -p stomp-broker -p loadgen; fi
fi
LOADGEN="$TARGET/$PROFILE/loadgen"
export STOMP_BROKER_BIN="$TARGET/$PROFILE/stomp-broker"
[ -x "$LOADGEN" ] && [ -x "$STOMP_BROKER_BIN" ] || { echo "binaries missing under $TARGET/$PROFILE" >&2; exit 2; }

tag="s7-$$-$(date +%s)"
CLUSTER_DIR="$(mktemp -d "${TMPDIR:-/tmp}/bench-cluster.XXXXXX")"
export CLUSTER_DIR CLUSTER_TOPIC="bench-$tag" CLUSTER_GROUP_ID="bench-$tag"
OUT="${BENCH_OUT:-$(mktemp "${TMPDIR:-/tmp}/bench-cluster-$tag.XXXXXX.jsonl")}"
HOPS="$OUT.hops"
: >"$HOPS"
BENCH_NICE="${BENCH_NICE:--10}"
# Its own Kafka (scripts/kafka.sh's, with the bench JVM settings below), not a shared one.
unset KAFKA_BOOTSTRAP
export KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms1g -Xmx1g}"
export KAFKA_GC_OPTS="${KAFKA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+UnlockExperimentalVMOptions -XX:G1NewSizePercent=50}"
if [ "$BENCH_NICE" != 0 ]; then echo "$BENCH_NICE" >/proc/self/autogroup 2>/dev/null || true; fi
# Stop Kafka at the end only if this script started it (cluster.sh reuses a running one and
# leaves it running); a Kafka already running keeps its own JVM settings, not the ones above.
KAFKA_WAS_RUNNING=
if bash "$ROOT/scripts/kafka.sh" status >/dev/null 2>&1; then
  KAFKA_WAS_RUNNING=1
  echo "note: reusing the Kafka already running (its JVM settings, not KAFKA_HEAP_OPTS/KAFKA_GC_OPTS)" >&2
fi
cleanup() {
  bash "$ROOT/scripts/cluster.sh" stop >/dev/null 2>&1 || true
  rm -rf "$CLUSTER_DIR"
  [ -n "$KAFKA_WAS_RUNNING" ] || bash "$ROOT/scripts/kafka.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

eval "$(bash scripts/cluster.sh start | grep -E '^CLUSTER_[A-Z0-9_]+=')"
ws() { printf 'ws://%s/ws' "${1#http://}"; }
N1=$(ws "$CLUSTER_NODE1_HTTP"); N2=$(ws "$CLUSTER_NODE2_HTTP"); N3=$(ws "$CLUSTER_NODE3_HTTP")
KAFKA_PID="$(cat "${KAFKA_DIR:-$ROOT/.kafka}/kafka.pid" 2>/dev/null || true)"
if [ "$BENCH_NICE" != 0 ]; then
  for p in $(cat "$CLUSTER_DIR"/node*.pid) $KAFKA_PID; do
    echo "$BENCH_NICE" >"/proc/$p/autogroup" 2>/dev/null || true
  done
fi
# Snapshot of the relay histograms of node1 and node2 and Kafka's GC totals, one JSON line.
hop_snap() {
  python3 - "$CLUSTER_NODE1_HTTP" "$CLUSTER_NODE2_HTTP" "$KAFKA_PID" <<'EOF'
import json, re, subprocess, sys, urllib.request
def hist(http):
    out = {}
    text = urllib.request.urlopen(f"{http}/metrics", timeout=5).read().decode()
    for m in re.finditer(r'^stomp_cluster_relay_latency_seconds_bucket\{stage="(\w+)",le="([^"]+)"\} (\d+)$',
                         text, re.M):
        out.setdefault(m.group(1), []).append([m.group(2), int(m.group(3))])
    return out
gc = {}
try:
    lines = subprocess.run(["jstat", "-gcutil", sys.argv[3]], capture_output=True, text=True).stdout.split("\n")
    cols = dict(zip(lines[0].split(), lines[1].split()))
    gc = {"n": sum(float(cols.get(k, 0) if cols.get(k, "-") != "-" else 0) for k in ("YGC", "FGC", "CGC")),
          "s": float(cols.get("GCT", 0))}
except Exception:
    pass
print(json.dumps({"node1": hist(sys.argv[1]), "node2": hist(sys.argv[2]), "gc": gc}))
EOF
}
load_before="$(uptime)"
echo "== S7: 3-node cluster, $PROFILE build; $(nproc) cores; load before: $load_before" >&2

lg() { "$LOADGEN" --warmup "$WARMUP" --duration "$DURATION" --json "$OUT" "$@" >/dev/null; }

for rate in $RATES; do
  for run in $(seq "$RUNS"); do
    echo "-- latency rate=$rate run=$run" >&2
    lg --ws-url "$N1" --label "same-node run=$run" s7 --rate "$rate" --body "$BODY" \
      --sub-url "$N1" --topic "/topic/s7.same.$rate.$run"
    before="$(hop_snap || echo '{}')"
    lg --ws-url "$N1" --label "cross-node run=$run" s7 --rate "$rate" --body "$BODY" \
      --sub-url "$N2" --topic "/topic/s7.cross.$rate.$run"
    printf '{"rate": %s, "run": %s, "before": %s, "after": %s}\n' "$rate" "$run" "$before" \
      "$(hop_snap || echo '{}')" >>"$HOPS"
  done
done
echo "-- fan-out $FANOUT_SUBS subscribers" >&2
lg --ws-url "$N1" --label "fanout one-node" s7 --subscribers "$FANOUT_SUBS" --body "$BODY" \
  --sub-url "$N1" --topic "/topic/s7.fan1"
lg --ws-url "$N1" --label "fanout three-nodes" s7 --subscribers "$FANOUT_SUBS" --body "$BODY" \
  --sub-url "$N1" --sub-url "$N2" --sub-url "$N3" --topic "/topic/s7.fan3"
load_after="$(uptime)"

python3 - "$OUT" "$load_before" "$load_after" "$HOPS" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
hops = [json.loads(l) for l in open(sys.argv[4]) if l.strip()]
ms = lambda us: "-" if us is None else f"{us / 1000:.2f}"
print(f"S7 cluster benchmark; load average before: {sys.argv[2].split('load average:')[-1].strip()}, "
      f"after: {sys.argv[3].split('load average:')[-1].strip()}")
print()
print("| path | rate/s | run | p50 ms | p99 ms | p99.9 ms | max ms | delivered | lost |")
print("|---|---|---|---|---|---|---|---|---|")
lat = [r for r in rows if r.get("mode") == "open-loop"]
for r in lat:
    path, run = r["label"].split(" run=")
    print(f"| {path} | {r['publish_rate']:.0f} | {run} | {ms(r.get('p50_us'))} | {ms(r.get('p99_us'))} | "
          f"{ms(r.get('p999_us'))} | {ms(r.get('max_us'))} | {r['delivered']} | {r['lost']} |")
print()
print("| path | rate/s | p99 per run (ms) | worst p99 ms | worst max ms |")
print("|---|---|---|---|---|")
keys = []
for r in lat:
    k = (r["label"].split(" run=")[0], r["publish_rate"])
    if k not in keys:
        keys.append(k)
for path, rate in keys:
    rs = [r for r in lat if r["label"].startswith(path + " ") and r["publish_rate"] == rate]
    p99s = [r.get("p99_us") or 0 for r in rs]
    print(f"| {path} | {rate:.0f} | {', '.join(ms(p) for p in p99s)} | {ms(max(p99s))} | "
          f"{ms(max(r.get('max_us') or 0 for r in rs))} |")
print()

def q(before, after, p):
    """Quantile p (ms) of the histogram delta, interpolated within its bucket."""
    b = {le: n for le, n in before}
    cum = [(float("inf") if le == "+Inf" else float(le), n - b.get(le, 0)) for le, n in after]
    if not cum or cum[-1][1] <= 0:
        return None
    rank, prev_le, prev_n = p * cum[-1][1], 0.0, 0
    for le, n in cum:
        if n >= rank:
            if le == float("inf"):
                return prev_le * 1000
            return (prev_le + (le - prev_le) * (rank - prev_n) / max(n - prev_n, 1)) * 1000
        prev_le, prev_n = le, n
    return None

print("Cross-node runs per hop (from the nodes' stomp_cluster_relay_latency_seconds; p99 within")
print("bucket resolution) and Kafka's GC during the run:")
print()
print("| rate/s | run | produce_ack p50/p99 ms (node1) | consume p50/p99 ms (node2) | "
      "deliver p99 ms (node2) | Kafka GCs | Kafka GC pause total ms |")
print("|---|---|---|---|---|---|---|")
for h in hops:
    b, a = h.get("before") or {}, h.get("after") or {}
    def st(node, stage, p):
        return q(b.get(node, {}).get(stage, []), a.get(node, {}).get(stage, []), p)
    gb, ga = b.get("gc", {}), a.get("gc", {})
    gcn = f"{ga['n'] - gb['n']:.0f}" if "n" in ga and "n" in gb else "-"
    gcs = f"{(ga['s'] - gb['s']) * 1000:.0f}" if "s" in ga and "s" in gb else "-"
    f = lambda v: "-" if v is None else f"{v:.2f}"
    print(f"| {h['rate']} | {h['run']} | {f(st('node1', 'produce_ack', .5))} / {f(st('node1', 'produce_ack', .99))} | "
          f"{f(st('node2', 'consume', .5))} / {f(st('node2', 'consume', .99))} | {f(st('node2', 'deliver', .99))} | "
          f"{gcn} | {gcs} |")
print()
print("| fan-out | subscribers | nodes | deliveries/s | p50 ms | p99 ms | lost | errors | closed by broker |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if r.get("mode") == "max":
        errs = r.get("errors", 0)
        print(f"| {r['label']} | {r['subscribers']} | {r['sub_nodes']} | {r['deliveries_per_s']:.0f} | "
              f"{ms(r.get('p50_us'))} | {ms(r.get('p99_us'))} | {r['lost']} | {errs} | {r.get('closed_by_broker', 0)} |")
EOF
echo "raw rows: $OUT" >&2
