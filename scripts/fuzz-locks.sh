#!/usr/bin/env bash
# The fuzz crates (stomp-codec/fuzz, stomp-client/fuzz, broker/fuzz) are their own workspaces with
# their own Cargo.lock. When a dependency of stomp-codec or stomp-broker changes,
# those locks go stale and the next `cargo fuzz` run rewrites them, leaving the
# work tree dirty. This checks them without changing anything, or brings them
# up to date (a minimal update: only what the manifests now require).
#
#   scripts/fuzz-locks.sh check    # exit 1 naming each stale lock (test.sh runs this)
#   scripts/fuzz-locks.sh update   # refresh the stale locks; commit the result
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mode="${1:-check}"
stale=0
for dir in stomp-codec/fuzz stomp-client/fuzz broker/fuzz; do
  manifest="$ROOT/$dir/Cargo.toml"
  [ -f "$manifest" ] || continue
  if cargo metadata --locked --format-version 1 --manifest-path "$manifest" >/dev/null 2>&1; then
    continue
  fi
  case "$mode" in
    update)
      echo "[fuzz-locks] updating $dir/Cargo.lock" >&2
      cargo metadata --format-version 1 --manifest-path "$manifest" >/dev/null
      ;;
    *)
      echo "[fuzz-locks] $dir/Cargo.lock is out of date with the manifests;" \
        "run 'bash scripts/fuzz-locks.sh update' and commit it" >&2
      stale=1
      ;;
  esac
done
exit "$stale"
