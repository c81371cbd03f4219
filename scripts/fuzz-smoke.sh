#!/usr/bin/env bash
# Short fuzz run of the stomp-codec cargo-fuzz targets, for CI.
#
#   scripts/fuzz-smoke.sh            # 2 targets x 25 s = 50 s of fuzzing (plus the build)
#   FUZZ_SECONDS=10 scripts/fuzz-smoke.sh
#
# Exits non-zero when a target crashes (the crashing input is written to
# stomp-codec/fuzz/artifacts/<target>/). Needs the nightly toolchain for
# cargo-fuzz; installs cargo-fuzz if it is missing. Without a nightly
# toolchain it says so and runs the stable proptest equivalent instead
# (stomp-codec/tests/properties.rs), so the script still proves something.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_PER_TARGET="${FUZZ_SECONDS:-25}"
TARGETS=(decode decode_split)
log() { printf '[fuzz-smoke] %s\n' "$*" >&2; }

# A stale fuzz Cargo.lock would be rewritten by the build below: refuse instead,
# so the run leaves the work tree as it found it.
bash "$ROOT/scripts/fuzz-locks.sh" check

if ! command -v rustup >/dev/null 2>&1 || ! rustup toolchain list | grep -q '^nightly'; then
  log "no nightly toolchain: cargo-fuzz cannot run; running the stable proptest equivalent"
  cd "$ROOT"
  PROPTEST_CASES="${PROPTEST_CASES:-4096}" \
    cargo test -p stomp-codec --test properties -- \
    decoding_arbitrary_bytes_never_panics_and_frames_round_trip \
    arbitrary_bytes_decode_the_same_however_split
  exit 0
fi

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

cd "$ROOT/stomp-codec/fuzz"
for target in "${TARGETS[@]}"; do
  # New inputs go to a scratch directory; the committed seed corpus stays as it is.
  work="$(mktemp -d)"
  log "fuzzing '$target' for ${SECONDS_PER_TARGET}s"
  cargo +nightly fuzz run -O "$target" "$work" "corpus/$target" -- \
    -max_total_time="$SECONDS_PER_TARGET" -print_final_stats=1
  rm -rf "$work"
done
log "no crash in ${#TARGETS[@]} targets"
