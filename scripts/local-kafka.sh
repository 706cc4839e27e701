#!/usr/bin/env bash
# Fetch, start, probe and stop a single-node Apache Kafka broker (KRaft, combined broker+controller)
# resolved from Maven Central. No Docker needed.
#
#   scripts/local-kafka.sh fetch   resolve the jars once into .cache/kafka/<version>/libs
#   scripts/local-kafka.sh up      fetch, format storage, start on 127.0.0.1:$KAFKA_PORT, wait for metadata
#   scripts/local-kafka.sh down    stop the broker by its PID (SIGTERM, then SIGKILL after 20 s)
#   scripts/local-kafka.sh status  exit 0 when the broker answers a metadata request
#
# Environment: KAFKA_PORT (default 19092), KAFKA_CONTROLLER_PORT (default KAFKA_PORT+1),
# KAFKA_VERSION (default 4.4.0; any 3.x or 4.x release, e.g. 3.9.2), KAFKA_STATE_DIR (default
# .local/kafka-$KAFKA_PORT), KAFKA_HEAP (default 512m).
#
# The logging differs by line: 4.x logs through Log4j2 (scripts/kafka/pom.xml binds slf4j 2 to it,
# configured by log4j2.yaml); 3.x logs through slf4j 1.7 and its POM names no binding, so
# scripts/kafka/pom-3.x.xml adds reload4j, configured by log4j.properties.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
version=${KAFKA_VERSION:-4.4.0}
port=${KAFKA_PORT:-19092}
cport=${KAFKA_CONTROLLER_PORT:-$((port + 1))}
state=${KAFKA_STATE_DIR:-$root/.local/kafka-$port}
libs=$root/.cache/kafka/$version/libs
heap=${KAFKA_HEAP:-512m}
case "$version" in
  3.*)
    pom=$root/scripts/kafka/pom-3.x.xml
    log_config=(-Dlog4j.configuration="file:$root/scripts/kafka/log4j.properties")
    ;;
  4.*)
    pom=$root/scripts/kafka/pom.xml
    log_config=(-Dlog4j2.configurationFile="$root/scripts/kafka/log4j2.yaml")
    ;;
  *)
    echo "local-kafka: KAFKA_VERSION $version is not a 3.x or 4.x release" >&2
    exit 2
    ;;
esac
pidfile=$state/kafka.pid
python=${PYTHON:-python3}

log() { printf 'local-kafka: %s\n' "$*" >&2; }

fetch() {
  if [ -f "$libs/.complete" ]; then
    return 0
  fi
  log "resolving org.apache.kafka:kafka_2.13:$version from Maven Central into $libs"
  rm -rf "$libs"
  mkdir -p "$libs"
  mvn -q -B -f "$pom" -Dkafka.version="$version" \
    dependency:copy-dependencies -DoutputDirectory="$libs"
  touch "$libs/.complete"
}

probe() {
  "$python" "$root/scripts/kafka_probe.py" "127.0.0.1:$port" "$@"
}

running_pid() {
  if [ -f "$pidfile" ]; then
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      echo "$pid"
      return 0
    fi
  fi
  return 1
}

write_properties() {
  cat > "$state/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$cport
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport
advertised.listeners=PLAINTEXT://127.0.0.1:$port
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$state/data
num.partitions=8
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
# Allow values up to 16 MiB so oversized (poison) tasks reach the worker and get a failure result.
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
PROPS
}

up() {
  fetch
  if pid=$(running_pid); then
    log "already running (pid $pid) on 127.0.0.1:$port"
    probe --wait 60
    return 0
  fi
  mkdir -p "$state/logs"
  # Storage formatted by one Kafka line is not for another: say so instead of a broker crash.
  # (State formatted before the version was recorded is taken as is.)
  if [ -f "$state/data/meta.properties" ] && [ -f "$state/kafka.version" ] &&
    [ "$(cat "$state/kafka.version")" != "$version" ]; then
    log "$state holds data of Kafka $(cat "$state/kafka.version"), not $version;" \
      "use another KAFKA_STATE_DIR or remove that one"
    exit 1
  fi
  write_properties
  local java_cmd=(java "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true
    "${log_config[@]}" "-Dkafka.logs.dir=$state/logs" -cp "$libs/*")
  if [ ! -f "$state/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid | tail -n 1)
    "${java_cmd[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$state/server.properties" \
      > "$state/logs/format.log" 2>&1 || { cat "$state/logs/format.log" >&2; exit 1; }
    echo "$version" > "$state/kafka.version"
  fi
  log "starting Kafka $version on 127.0.0.1:$port (state in $state)"
  nohup "${java_cmd[@]}" kafka.Kafka "$state/server.properties" > "$state/logs/stdout.log" 2>&1 &
  echo $! > "$pidfile"
  if ! probe --wait 90; then
    log "broker did not answer within 90 s; last log lines:"
    tail -n 30 "$state/logs/stdout.log" "$state/logs/server.log" >&2 || true
    down
    exit 1
  fi
  log "ready on 127.0.0.1:$port (pid $(cat "$pidfile"))"
}

down() {
  local pid
  if ! pid=$(running_pid); then
    log "not running"
    rm -f "$pidfile"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "still alive after 20 s, sending SIGKILL"
    kill -KILL "$pid" || true
  fi
  rm -f "$pidfile"
  log "stopped (pid $pid)"
}

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  status) probe ;;
  *) echo "usage: $0 fetch|up|down|status" >&2; exit 2 ;;
esac
