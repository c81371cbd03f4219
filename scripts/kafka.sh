#!/usr/bin/env bash
# Single-node Apache Kafka (KRaft, broker+controller in one JVM) for local
# development and CI. No Docker, no tarball download: the jars come from
# Maven Central through `mvn dependency:copy-dependencies`.
#
#   scripts/kafka.sh fetch      download Kafka jars into .kafka/libs (skipped if present)
#   scripts/kafka.sh start      fetch if needed, format storage once, start, wait until ready,
#                               print the bootstrap address (idempotent: prints it if running)
#   scripts/kafka.sh stop       SIGTERM, wait, SIGKILL fallback
#   scripts/kafka.sh restart    stop + start on the SAME ports with the SAME data dir
#   scripts/kafka.sh status     "running 127.0.0.1:P (pid N)" / "stopped"; exit 0 / 3
#   scripts/kafka.sh bootstrap  print the bootstrap address (exit 1 if never started)
#   scripts/kafka.sh reset      stop and delete the data dir (topics, offsets, groups)
#   scripts/kafka.sh alloc      choose and save both ports without starting; print the
#                               bootstrap address (tests that need it before Kafka is up)
#
# Environment:
#   KAFKA_PORT             force the PLAINTEXT listener port (default: saved port, else a free one)
#   KAFKA_CONTROLLER_PORT  force the controller port (default: saved port, else a free one)
#   KAFKA_DIR              state directory (default: <repo>/.kafka)
#   KAFKA_LIBS             jar directory (default: $KAFKA_DIR/libs); lets a second,
#                          private instance (own KAFKA_DIR) reuse the fetched jars
#   KAFKA_HEAP_OPTS        JVM heap (default: -Xms256m -Xmx512m)
#   KAFKA_GC_OPTS          JVM garbage collector options (default: -XX:+UseG1GC -XX:MaxGCPauseMillis=20)
#   KAFKA_EXTRA_PROPERTIES extra server.properties lines, separated by ';' (later lines win,
#                          e.g. "num.network.threads=1;num.io.threads=1")
#   KAFKA_START_TIMEOUT    seconds to wait for readiness (default: 90)
#   KAFKA_MAVEN_REPO       Maven local repository for fetch (default: Maven's, ~/.m2/repository)
#
# Everything listens on 127.0.0.1 only. Layout of $KAFKA_DIR:
#   libs/ (jars)  config/ (server.properties, log4j2.xml)  data/ (log.dirs)
#   logs/ (server.log, stdout.log)  kafka.pid  bootstrap  ports
set -euo pipefail

KAFKA_VERSION="4.4.0"          # org.apache.kafka:kafka_2.13, newest 4.x on Maven Central when pinned
LOG4J_VERSION="2.25.3"         # log4j-core + log4j-slf4j2-impl: Kafka 4.x logs through SLF4J 2 -> log4j2
SLF4J_VERSION="2.0.17"
DEPENDENCY_PLUGIN_VERSION="3.8.1"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KDIR="${KAFKA_DIR:-$ROOT/.kafka}"
LIBS="${KAFKA_LIBS:-$KDIR/libs}"
CONF="$KDIR/config"
DATA="$KDIR/data"
LOGS="$KDIR/logs"
PIDFILE="$KDIR/kafka.pid"
BOOTFILE="$KDIR/bootstrap"
PORTSFILE="$KDIR/ports"
MARKER="$LIBS/.complete-$KAFKA_VERSION-log4j$LOG4J_VERSION-slf4j$SLF4J_VERSION"
TIMEOUT="${KAFKA_START_TIMEOUT:-90}"

log() { echo "kafka.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------- fetch
cmd_fetch() {
    if [[ -f "$MARKER" ]]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn not found (apt-get install maven)"
    command -v java >/dev/null || die "java not found (Java 17+ required)"
    mkdir -p "$KDIR"
    local work
    work="$(mktemp -d "$KDIR/fetch.XXXXXX")"
    cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.throwaway</groupId>
  <artifactId>kafka-fetch</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <!-- kafka-clients' pom names slf4j-api 1.7; the log4j2 binding needs the 2.x API (a direct dependency wins). -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$SLF4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
    log "fetching kafka_2.13:$KAFKA_VERSION and runtime dependencies from Maven Central"
    local repo_opt=()
    [[ -n "${KAFKA_MAVEN_REPO:-}" ]] && repo_opt=(-Dmaven.repo.local="$KAFKA_MAVEN_REPO")
    if ! mvn -B -q --no-transfer-progress "${repo_opt[@]}" -f "$work/pom.xml" \
        "org.apache.maven.plugins:maven-dependency-plugin:$DEPENDENCY_PLUGIN_VERSION:copy-dependencies" \
        -DincludeScope=runtime -DoutputDirectory="$work/libs" </dev/null >"$work/mvn.log" 2>&1; then
        tail -n 40 "$work/mvn.log" >&2
        rm -rf "$work"
        die "maven fetch failed"
    fi
    # Several versions of one artifact cannot end up on the classpath: copy-dependencies
    # applies Maven's nearest-wins resolution, so each artifact appears once.
    rm -rf "$LIBS"
    mv "$work/libs" "$LIBS"
    rm -rf "$work"
    touch "$MARKER"
    log "fetched $(ls "$LIBS"/*.jar | wc -l) jars into $LIBS"
}

# ---------------------------------------------------------------- helpers
free_port() {
    # Below the kernel's ephemeral range: no bind(0) and no outgoing
    # connection can take it while this Kafka is stopped (the outage tests
    # stop it for 30 s), so a restart gets the same address.
    local low p
    low="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
    (( low > 11000 )) || low=32768
    for _ in $(seq 1 500); do
        p=$((10000 + (RANDOM * 32768 + RANDOM) % (low - 10000)))
        port_open "$p" && continue
        if command -v python3 >/dev/null; then
            python3 -c "import socket; socket.socket().bind(('127.0.0.1', $p))" 2>/dev/null || continue
        fi
        echo "$p"
        return
    done
    die "no free port found"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Alive and really our Kafka (guards against PID reuse after a reboot or crash).
running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'kafka\.Kafka' || return 1
    echo "$pid"
}

java_cmd() { echo "${JAVA:-java}"; }

write_configs() {
    local port="$1" cport="$2"
    mkdir -p "$CONF" "$DATA" "$LOGS"
    cat >"$CONF/server.properties" <<EOF
# Generated by scripts/kafka.sh; edits are overwritten on start.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$DATA
num.partitions=1
default.replication.factor=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
delete.topic.enable=true
log.segment.bytes=16777216
log.retention.hours=24
num.network.threads=2
num.io.threads=2
num.recovery.threads.per.data.dir=1
EOF
    if [[ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]]; then
        tr ';' '\n' <<<"$KAFKA_EXTRA_PROPERTIES" >>"$CONF/server.properties"
    fi
    cat >"$CONF/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="server" fileName="$LOGS/server.log" filePattern="$LOGS/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <SizeBasedTriggeringPolicy size="20 MB"/>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.controller" level="INFO"/>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
  </Loggers>
</Configuration>
EOF
}

# ---------------------------------------------------------------- start
cmd_start() {
    local pid
    if pid="$(running_pid)"; then
        cat "$BOOTFILE"
        return 0
    fi
    cmd_fetch
    mkdir -p "$KDIR" "$LOGS"
    rm -f "$PIDFILE"

    # Ports: explicit env > saved (same data dir => same controller endpoint) > free.
    local saved_port="" saved_cport=""
    if [[ -f "$PORTSFILE" ]]; then
        read -r saved_port saved_cport <"$PORTSFILE" || true
    fi
    local port="${KAFKA_PORT:-}" cport="${KAFKA_CONTROLLER_PORT:-}"
    if [[ -z "$port" && -n "$saved_port" ]] && ! port_open "$saved_port"; then port="$saved_port"; fi
    if [[ -z "$cport" && -n "$saved_cport" ]] && ! port_open "$saved_cport"; then cport="$saved_cport"; fi
    [[ -n "$port" ]] || port="$(free_port)"
    [[ -n "$cport" ]] || cport="$(free_port)"
    while [[ "$cport" == "$port" ]]; do cport="$(free_port)"; done
    if port_open "$port"; then die "port 127.0.0.1:$port is already in use"; fi
    if port_open "$cport"; then die "controller port 127.0.0.1:$cport is already in use"; fi

    # The controller endpoint is part of the formatted quorum state: if it changed,
    # the old data dir cannot be reused, so start from empty storage.
    if [[ -f "$DATA/meta.properties" && "$cport" != "$saved_cport" ]]; then
        log "controller port changed ($saved_cport -> $cport): wiping $DATA"
        rm -rf "$DATA"
    fi
    write_configs "$port" "$cport"
    echo "$port $cport" >"$PORTSFILE"

    local java cp
    java="$(java_cmd)"
    cp="$LIBS/*"
    local jopts=(-Dlog4j2.configurationFile="$CONF/log4j2.xml" -Dkafka.logs.dir="$LOGS"
        -Djava.awt.headless=true -XX:+ExitOnOutOfMemoryError)
    # shellcheck disable=SC2206
    jopts+=(${KAFKA_GC_OPTS:--XX:+UseG1GC -XX:MaxGCPauseMillis=20})
    if [[ ! -f "$DATA/meta.properties" ]]; then
        local uuid
        uuid="$("$java" "${jopts[@]}" -cp "$cp" kafka.tools.StorageTool random-uuid </dev/null 2>>"$LOGS/stdout.log" | tail -n 1)"
        [[ -n "$uuid" ]] || die "could not generate a cluster id (see $LOGS/stdout.log)"
        if ! "$java" "${jopts[@]}" -Xmx256m -cp "$cp" kafka.tools.StorageTool format -t "$uuid" \
            -c "$CONF/server.properties" </dev/null >>"$LOGS/stdout.log" 2>&1; then
            tail -n 30 "$LOGS/stdout.log" >&2
            die "storage format failed"
        fi
    fi

    local logpos=0
    [[ -f "$LOGS/server.log" ]] && logpos="$(wc -c <"$LOGS/server.log")"
    # shellcheck disable=SC2086
    setsid "$java" ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m} "${jopts[@]}" -cp "$cp" kafka.Kafka \
        "$CONF/server.properties" </dev/null >>"$LOGS/stdout.log" 2>&1 &
    pid=$!
    echo "$pid" >"$PIDFILE"
    echo "127.0.0.1:$port" >"$BOOTFILE"

    local deadline=$((SECONDS + TIMEOUT))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "Kafka exited during startup; last log lines:"
            tail -n 40 "$LOGS/server.log" "$LOGS/stdout.log" >&2 2>/dev/null || true
            rm -f "$PIDFILE"
            exit 1
        fi
        # Not `tail | grep -q`: grep stops at the first match, tail then dies
        # of SIGPIPE once the new log outgrows a pipe buffer (a data dir with
        # many groups), and with pipefail the match would count as a failure.
        if port_open "$port" && grep -q 'Kafka Server started' <(tail -c +"$((logpos + 1))" "$LOGS/server.log" 2>/dev/null); then
            break
        fi
        if ((SECONDS >= deadline)); then
            log "Kafka not ready after ${TIMEOUT}s; last log lines:"
            tail -n 40 "$LOGS/server.log" "$LOGS/stdout.log" >&2 2>/dev/null || true
            cmd_stop || true
            exit 1
        fi
        sleep 0.5
    done
    cat "$BOOTFILE"
}

# ---------------------------------------------------------------- stop
cmd_stop() {
    local pid
    if ! pid="$(running_pid)"; then
        rm -f "$PIDFILE"
        return 0
    fi
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "Kafka (pid $pid) ignored SIGTERM for 30s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for _ in $(seq 1 20); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
    fi
    rm -f "$PIDFILE"
}

cmd_restart() {
    [[ -f "$PORTSFILE" ]] || die "never started: no $PORTSFILE"
    local port cport
    read -r port cport <"$PORTSFILE"
    cmd_stop
    KAFKA_PORT="$port" KAFKA_CONTROLLER_PORT="$cport" cmd_start
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "running $(cat "$BOOTFILE") (pid $pid)"
    else
        echo "stopped"
        return 3
    fi
}

cmd_bootstrap() {
    [[ -f "$BOOTFILE" ]] || die "no $BOOTFILE: run scripts/kafka.sh start"
    cat "$BOOTFILE"
}

cmd_alloc() {
    mkdir -p "$KDIR"
    local port="${KAFKA_PORT:-}" cport="${KAFKA_CONTROLLER_PORT:-}"
    if [[ -f "$PORTSFILE" ]]; then
        read -r port cport <"$PORTSFILE" || true
    fi
    [[ -n "$port" ]] || port="$(free_port)"
    [[ -n "$cport" ]] || cport="$(free_port)"
    while [[ "$cport" == "$port" ]]; do cport="$(free_port)"; done
    echo "$port $cport" >"$PORTSFILE"
    echo "127.0.0.1:$port" >"$BOOTFILE"
    echo "127.0.0.1:$port"
}

cmd_reset() {
    cmd_stop
    rm -rf "$DATA" "$PORTSFILE" "$BOOTFILE"
}

case "${1:-}" in
fetch) cmd_fetch ;;
start) cmd_start ;;
stop) cmd_stop ;;
restart) cmd_restart ;;
status) cmd_status ;;
bootstrap) cmd_bootstrap ;;
reset) cmd_reset ;;
alloc) cmd_alloc ;;
*)
    sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
