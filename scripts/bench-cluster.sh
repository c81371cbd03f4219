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
cleanup() { bash "$ROOT/scripts/cluster.sh" stop >/dev/null 2>&1 || true; rm -rf "$CLUSTER_DIR"; }
trap cleanup EXIT

eval "$(bash scripts/cluster.sh start | grep -E '^CLUSTER_[A-Z0-9_]+=')"
ws() { printf 'ws://%s/ws' "${1#http://}"; }
N1=$(ws "$CLUSTER_NODE1_HTTP"); N2=$(ws "$CLUSTER_NODE2_HTTP"); N3=$(ws "$CLUSTER_NODE3_HTTP")
load_before="$(uptime)"
echo "== S7: 3-node cluster, $PROFILE build; $(nproc) cores; load before: $load_before" >&2

lg() { "$LOADGEN" --warmup "$WARMUP" --duration "$DURATION" --json "$OUT" "$@" >/dev/null; }

for rate in $RATES; do
  for run in $(seq "$RUNS"); do
    echo "-- latency rate=$rate run=$run" >&2
    lg --ws-url "$N1" --label "same-node run=$run" s7 --rate "$rate" --body "$BODY" \
      --sub-url "$N1" --topic "/topic/s7.same.$rate.$run"
    lg --ws-url "$N1" --label "cross-node run=$run" s7 --rate "$rate" --body "$BODY" \
      --sub-url "$N2" --topic "/topic/s7.cross.$rate.$run"
  done
done
echo "-- fan-out $FANOUT_SUBS subscribers" >&2
lg --ws-url "$N1" --label "fanout one-node" s7 --subscribers "$FANOUT_SUBS" --body "$BODY" \
  --sub-url "$N1" --topic "/topic/s7.fan1"
lg --ws-url "$N1" --label "fanout three-nodes" s7 --subscribers "$FANOUT_SUBS" --body "$BODY" \
  --sub-url "$N1" --sub-url "$N2" --sub-url "$N3" --topic "/topic/s7.fan3"
load_after="$(uptime)"

python3 - "$OUT" "$load_before" "$load_after" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
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
print("| fan-out | subscribers | nodes | deliveries/s | p50 ms | p99 ms | lost | errors | closed by broker |")
print("|---|---|---|---|---|---|---|---|---|")
for r in rows:
    if r.get("mode") == "max":
        errs = r.get("errors", 0)
        print(f"| {r['label']} | {r['subscribers']} | {r['sub_nodes']} | {r['deliveries_per_s']:.0f} | "
              f"{ms(r.get('p50_us'))} | {ms(r.get('p99_us'))} | {r['lost']} | {errs} | {r.get('closed_by_broker', 0)} |")
EOF
echo "raw rows: $OUT" >&2
