#!/usr/bin/env bash
# S8 variants (docs/benchmarks.md "Quiet-machine run of the raised targets"): the wildcard
# index at 50,000 publishes/s without the 1,000-way fan-out, and the issue's form at 500/s.
# Release binaries from `cargo build --release -p stomp-broker -p loadgen`; rows in $S8_OUT.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
trap stop_ours EXIT
bench_prepare
R="${S8_OUT:-/tmp/s8.jsonl}"; : >"$R"
c=(--duration 5 --warmup 1 --json $R)
run() { start_ours; loadgen_ours s8 "$@" "${c[@]}" >/dev/null || blog "failed $*"; stop_ours; }
for round in 1 2 3; do
  run --hash-pattern '/topic/order.{id}.#' --variant per-id-hash
  run --hash-subscribers 0 --variant star-only
  run --rate 500 --variant literal-500
done
