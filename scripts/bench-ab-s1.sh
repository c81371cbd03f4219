#!/usr/bin/env bash
# S1 (1,000 WebSocket subscribers, max throughput) for two broker binaries
# side by side: rounds alternate old/new, each a fresh broker pinned to CPU 0
# with the same load generator pinned to CPU 1. Prints each run's table and
# a summary line per run (deliveries/s, broker CPU-s per million).
#
#   scripts/bench-ab-s1.sh OLD_BROKER NEW_BROKER LOADGEN [ROUNDS]
#
# Build the binaries with `cargo build --release -p stomp-broker -p loadgen`
# in two worktrees (e.g. `git worktree add --detach ../old <rev>`).
# Loopback only; each run lasts DURATION (5) + WARMUP (1) seconds.
set -euo pipefail
OLD="$1" NEW="$2" LG="$3" ROUNDS="${4:-3}"
DURATION="${DURATION:-5}" WARMUP="${WARMUP:-1}"
W="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; rm -rf "$W"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  for which in old new; do
    bin="$OLD"; [ "$which" = new ] && bin="$NEW"
    rm -f "$W/p"
    taskset -c 0 "$bin" --stomp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
      --port-file "$W/p" --log-level warn >"$W/log" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do [ -s "$W/p" ] && break; sleep 0.1; done
    taskset -c 1 "$LG" s1 --port-file "$W/p" --broker-pid "$pid" --label "$which-r$round" \
      --subscribers 1000 --duration "$DURATION" --warmup "$WARMUP" --json "$W/res.jsonl" >/dev/null
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done
python3 - "$W/res.jsonl" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
print(f"{'run':<8} {'deliveries/s':>13} {'broker CPU-s/M':>15} {'errors':>7}")
for r in rows:
    print(f"{r['label']:<8} {r['deliveries_per_s']:>13,.0f} {r['broker_cpu_s_per_m']:>15.3f} {r.get('errors', 0):>7}")
for w in ("old", "new"):
    v = [r["deliveries_per_s"] for r in rows if r["label"].startswith(w)]
    print(f"median {w}: {statistics.median(v):,.0f}/s (min {min(v):,.0f}, max {max(v):,.0f})")
PY
