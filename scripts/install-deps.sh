#!/usr/bin/env bash
# Install what the third-party-client interop tests need (tests/interop/).
# Idempotent and non-interactive: safe to run in CI (CI=true, no stdin, root);
# a fast no-op when everything is already present.
#
#   - Debian `chromium` at /usr/bin/chromium (for the playwright-core browser smoke test;
#     `npx playwright install` is never used: browser builds cannot be downloaded here)
#   - npm packages of tests/interop/package.json (@stomp/stompjs, ws, playwright-core)
#   - Python packages of tests/interop/requirements.txt (stomp.py, pytest)
#   - Debian `prometheus` for promtool (scripts/check-ops.sh: alert rules, example config)
#   - a Java 17+ JDK and Maven (Debian packages) for examples/spring-relay; Maven itself
#     fetches the Spring Boot dependencies from Maven Central on the first run
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INTEROP="$ROOT/tests/interop"
export DEBIAN_FRONTEND=noninteractive
export CI="${CI:-true}"

log() { printf '[install-deps] %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" != "0" ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; fi

# --- Build tools for librdkafka (rdkafka's cmake build) -------------------------------------
if ! command -v cmake >/dev/null 2>&1; then
  log "installing Debian cmake (needed to build librdkafka)"
  $SUDO apt-get update -q </dev/null
  $SUDO apt-get install -y -q --no-install-recommends cmake </dev/null
fi

# --- HAProxy (Debian package; scripts/cluster.sh and the failover tests) -------------------
if command -v haproxy >/dev/null 2>&1 && command -v curl >/dev/null 2>&1; then
  log "haproxy present: $(command -v haproxy)"
else
  log "installing Debian haproxy and curl"
  $SUDO apt-get update -q </dev/null
  $SUDO apt-get install -y -q --no-install-recommends haproxy curl </dev/null
fi

# --- Chromium (Debian package) -------------------------------------------------------------
if [ -x /usr/bin/chromium ]; then
  log "chromium present: /usr/bin/chromium"
else
  log "installing Debian chromium"
  $SUDO apt-get update -q </dev/null
  $SUDO apt-get install -y -q --no-install-recommends chromium fonts-liberation </dev/null
fi

# --- promtool (Debian prometheus package; scripts/check-ops.sh checks deploy/prometheus) ------
# Only the promtool binary is used; no Prometheus server is started (in a container
# policy-rc.d stops the service from starting; elsewhere `systemctl disable --now prometheus`).
if command -v promtool >/dev/null 2>&1; then
  log "promtool present: $(command -v promtool)"
else
  log "installing Debian prometheus (for promtool)"
  $SUDO apt-get update -q </dev/null
  $SUDO apt-get install -y -q --no-install-recommends prometheus </dev/null
fi

# --- Java 17+ and Maven (Debian packages) --------------------------------------------------
java_major() {
  java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p'
}
if command -v javac >/dev/null 2>&1 && command -v mvn >/dev/null 2>&1 \
   && [ "$(java_major | cut -d. -f1)" -ge 17 ] 2>/dev/null; then
  log "java $(java_major) and maven present"
else
  log "installing Debian openjdk-17-jdk-headless and maven"
  $SUDO apt-get update -q </dev/null
  $SUDO apt-get install -y -q --no-install-recommends openjdk-17-jdk-headless maven </dev/null
fi

# --- Node packages ---------------------------------------------------------------------------
need_npm=1
if [ -d "$INTEROP/node_modules" ] && [ -f "$INTEROP/node_modules/.package-lock.json" ] \
   && [ -f "$INTEROP/package-lock.json" ]; then
  # npm ci writes node_modules/.package-lock.json; when it is newer than the lock and the
  # packages are there, nothing changed since the last install.
  if [ "$INTEROP/node_modules/.package-lock.json" -nt "$INTEROP/package-lock.json" ] \
     && [ -f "$INTEROP/node_modules/@stomp/stompjs/package.json" ] \
     && [ -f "$INTEROP/node_modules/ws/package.json" ] \
     && [ -f "$INTEROP/node_modules/playwright-core/package.json" ]; then
    need_npm=0
  fi
fi
if [ "$need_npm" = 1 ]; then
  cd "$INTEROP"
  # Never let playwright try to download browsers.
  export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
  if [ -f package-lock.json ]; then
    log "npm ci in tests/interop"
    npm ci --no-audit --no-fund --loglevel=error </dev/null
  else
    log "npm install in tests/interop (no package-lock.json)"
    npm install --no-audit --no-fund --loglevel=error </dev/null
  fi
  touch "$INTEROP/node_modules/.package-lock.json"
else
  log "node_modules up to date"
fi

# --- Python packages -------------------------------------------------------------------------
PY="${PYTHON:-python3}"
if "$PY" - "$INTEROP/requirements.txt" <<'PYEOF' >/dev/null 2>&1
import sys
from importlib.metadata import version, PackageNotFoundError
ok = True
for line in open(sys.argv[1]):
    line = line.split('#', 1)[0].strip()
    if not line:
        continue
    name, _, want = line.partition('==')
    try:
        if want and version(name.strip()) != want.strip():
            ok = False
    except PackageNotFoundError:
        ok = False
sys.exit(0 if ok else 1)
PYEOF
then
  log "python packages present"
else
  log "pip install -r tests/interop/requirements.txt"
  "$PY" -m pip install -q --disable-pip-version-check --no-input --root-user-action=ignore -r "$INTEROP/requirements.txt" </dev/null
fi

log "done"
