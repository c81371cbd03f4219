#!/usr/bin/env bash
# A latency scenario (S2, S8, ...) for two broker binaries side by side:
# runs alternate old/new (A,B,A,B,...), each a fresh broker pinned to CPU 0
# with the same load generator pinned to CPU 1, so both see the same
# machine load. Prints one line per run (p50/p99/max, deliveries/s, broker
# CPU, the generator's own publishing lag and CPU, the broker's
# `stomp_runtime_stalls_total` where it has one) and the median p99 of each
# side. A run whose publisher lag is close to its p99 measured the
# generator, not the broker (latencies are stamped at scheduled send times).
#
#   scripts/bench-ab-latency.sh OLD_BROKER NEW_BROKER LOADGEN ROUNDS -- <loadgen args>
#   e.g. ... 3 -- s2 --subscribers 10000 --rate 50000 --status-subscriber
#
# OLD_ENV / NEW_ENV: extra environment for each side's broker (e.g.
# NEW_ENV=MIMALLOC_PURGE_DELAY=1000 with the same binary twice).
# Loopback only; each run lasts DURATION (5) + WARMUP (1) seconds.
set -euo pipefail
OLD="$1" NEW="$2" LG="$3" ROUNDS="$4"; shift 4
[ "${1:-}" = "--" ] && shift
DURATION="${DURATION:-5}" WARMUP="${WARMUP:-1}"
W="$(mktemp -d)"
pid=""
trap '[ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; rm -rf "$W"' EXIT
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
for round in $(seq 1 "$ROUNDS"); do
  for which in old new; do
    bin="$OLD" env_extra="${OLD_ENV:-}"
    [ "$which" = new ] && bin="$NEW" env_extra="${NEW_ENV:-}"
    rm -f "$W/p"
    env $env_extra taskset -c 0 "$bin" --stomp-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
      --port-file "$W/p" --log-level warn >"$W/log-$which-$round" 2>&1 &
    pid=$!
    for _ in $(seq 1 100); do [ -s "$W/p" ] && break; sleep 0.1; done
    load="$(cut -d' ' -f1 /proc/loadavg)"
    taskset -c 1 "$LG" "$@" --port-file "$W/p" --broker-pid "$pid" --label "$which-r$round" \
      --duration "$DURATION" --warmup "$WARMUP" --json "$W/res.jsonl" >/dev/null
    http="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["http"])' "$W/p")"
    stalls="$(curl -s "http://$http/metrics" | awk '/^stomp_runtime_stalls_total/{print $2}')"
    echo "{\"label\":\"$which-r$round\",\"load1\":$load,\"stalls\":\"${stalls:-n/a}\"}" >>"$W/extra.jsonl"
    kill -TERM "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done
python3 - "$W/res.jsonl" "$W/extra.jsonl" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
extra = {e["label"]: e for e in map(json.loads, open(sys.argv[2]))}
print(f"{'run':<8} {'p50 ms':>8} {'p99 ms':>9} {'max ms':>9} {'pub lag p99/max ms':>19} {'deliv/s':>9} {'lost':>6} {'broker CPU %':>12} {'gen CPU %':>9} {'stalls':>7} {'load1':>6}")
for r in rows:
    e = extra.get(r["label"], {})
    ms = lambda k: r.get(k, float("nan")) / 1000
    lag = f"{ms('pub_lag_p99_us'):.2f} / {ms('pub_lag_max_us'):.1f}"
    print(f"{r['label']:<8} {ms('p50_us'):>8.2f} {ms('p99_us'):>9.2f} {ms('max_us'):>9.1f} {lag:>19} "
          f"{r.get('deliveries_per_s', 0):>9,.0f} {r.get('lost', 0):>6} "
          f"{r.get('broker_cpu_pct', ''):>12} {r.get('gen_cpu_pct', ''):>9} {e.get('stalls', ''):>7} {e.get('load1', ''):>6}")
for w in ("old", "new"):
    v = [r["p99_us"] / 1000 for r in rows if r["label"].startswith(w) and "p99_us" in r]
    if v:
        print(f"median p99 {w}: {statistics.median(v):.2f} ms over {len(v)} runs ({', '.join(f'{x:.2f}' for x in v)})")
PY
