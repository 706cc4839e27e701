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
# .local/kafka-$KAFKA_PORT), KAFKA_HEAP (default 512m), KAFKA_AUTO_CREATE_TOPICS (default true).
#
# KAFKA_SECURE=1 makes `up` start a secured broker instead: besides PLAINTEXT on KAFKA_PORT (admin
# and inter-broker traffic) it listens with SASL_SSL on KAFKA_SASL_PORT (default KAFKA_PORT+2;
# SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN, user ftp-pooler) and with mutual TLS on KAFKA_MTLS_PORT
# (default KAFKA_PORT+3; client certificate required). The CA, broker and client certificates
# (scripts/kafka/certs.sh), the password (0600, never printed) and client.json / client.env saying
# how to connect are written into the state dir. `down` and `status` work the same in both modes.
#
# The 3-node cluster (scripts/kafka/cluster.sh has the details and its environment):
#   scripts/local-kafka.sh cluster-up|cluster-down|cluster-status|node-kill N|node-stop N|node-start N
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
auto_create=${KAFKA_AUTO_CREATE_TOPICS:-true}
secure=${KAFKA_SECURE:-0}
sasl_port=${KAFKA_SASL_PORT:-$((port + 2))}
mtls_port=${KAFKA_MTLS_PORT:-$((port + 3))}
scram_user=ftp-pooler
case "$auto_create" in
  true | false) ;;
  *) echo "local-kafka: KAFKA_AUTO_CREATE_TOPICS must be true or false" >&2; exit 2 ;;
esac

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
  local file=${1:-$pidfile}
  if [ -f "$file" ]; then
    local pid
    pid=$(cat "$file")
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
auto.create.topics.enable=$auto_create
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
  if [ "$secure" = 1 ]; then
    write_secure_properties
  fi
}

# The secured broker: the same file with the listeners replaced and TLS/SASL settings appended.
# The PLAIN user's password sits in the file (Kafka's static JAAS users), so the file is 0600.
write_secure_properties() {
  local props=$state/server.properties tls=$state/tls password
  password=$(cat "$state/client.password")
  chmod 600 "$props"
  sed -i -e '/^listeners=/d' -e '/^advertised.listeners=/d' -e '/^listener.security.protocol.map=/d' \
    "$props"
  cat >> "$props" <<PROPS
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport,SASL_SSL://127.0.0.1:$sasl_port,MTLS://127.0.0.1:$mtls_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port,SASL_SSL://127.0.0.1:$sasl_port,MTLS://127.0.0.1:$mtls_port
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,MTLS:SSL
sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$scram_user="$password";
ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
listener.name.mtls.ssl.client.auth=required
# The mTLS principal is the certificate's CN (User:ftp-pooler), as for SASL.
ssl.principal.mapping.rules=RULE:^CN=([^,]+)\$/\$1/,DEFAULT
PROPS
}

# Certificates, the password and the description clients read; kept across restarts.
prepare_secure_material() {
  bash "$root/scripts/kafka/certs.sh" "$state/tls"
  if [ ! -s "$state/client.password" ]; then
    (umask 077 && openssl rand -hex 24 > "$state/client.password")
  fi
  chmod 600 "$state/client.password"
  STATE=$state VERSION=$version PORT=$port SASL_PORT=$sasl_port MTLS_PORT=$mtls_port \
    USER_NAME=$scram_user "$python" - <<'PY'
import json, os, shlex
state = os.environ["STATE"]
host = "127.0.0.1"
info = {
    "kafka_version": os.environ["VERSION"],
    "plaintext_bootstrap": f"{host}:{os.environ['PORT']}",
    "sasl_bootstrap": f"{host}:{os.environ['SASL_PORT']}",
    "mtls_bootstrap": f"{host}:{os.environ['MTLS_PORT']}",
    "sasl_mechanisms": ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"],
    "username": os.environ["USER_NAME"],
    "password_file": f"{state}/client.password",
    "ca_file": f"{state}/tls/ca.pem",
    "cert_file": f"{state}/tls/client.pem",
    "key_file": f"{state}/tls/client.key",
}
with open(f"{state}/client.json", "w") as out:
    json.dump(info, out, indent=2)
    out.write("\n")
with open(f"{state}/client.env", "w") as out:
    for key, value in info.items():
        value = ",".join(value) if isinstance(value, list) else value
        name = key.upper() if key.startswith("kafka_") else f"KAFKA_{key.upper()}"
        out.write(f"{name}={shlex.quote(value)}\n")
PY
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
  # SCRAM users are written at format time, so a broker formatted without them cannot be secured.
  if [ "$secure" = 1 ] && [ -f "$state/data/meta.properties" ] &&
    [ "$(cat "$state/kafka.mode" 2>/dev/null)" != secure ]; then
    log "$state was formatted without KAFKA_SECURE=1; use another KAFKA_STATE_DIR or remove it"
    exit 1
  fi
  local format_extra=()
  if [ "$secure" = 1 ]; then
    prepare_secure_material
    local password
    password=$(cat "$state/client.password")
    format_extra=(--add-scram "SCRAM-SHA-512=[name=$scram_user,password=$password]"
      --add-scram "SCRAM-SHA-256=[name=$scram_user,password=$password]")
  fi
  write_properties
  local java_cmd=(java "-Xms$heap" "-Xmx$heap" -XX:+UseG1GC -Djava.awt.headless=true
    "${log_config[@]}" "-Dkafka.logs.dir=$state/logs" -cp "$libs/*")
  if [ ! -f "$state/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$("${java_cmd[@]}" kafka.tools.StorageTool random-uuid | tail -n 1)
    "${java_cmd[@]}" kafka.tools.StorageTool format -t "$cluster_id" -c "$state/server.properties" \
      "${format_extra[@]}" > "$state/logs/format.log" 2>&1 ||
      { cat "$state/logs/format.log" >&2; exit 1; }
    echo "$version" > "$state/kafka.version"
    if [ "$secure" = 1 ]; then echo secure > "$state/kafka.mode"; fi
  fi
  if [ "$secure" = 1 ]; then
    log "starting secured Kafka $version: PLAINTEXT 127.0.0.1:$port, SASL_SSL 127.0.0.1:$sasl_port," \
      "mTLS 127.0.0.1:$mtls_port (state in $state, clients read $state/client.json)"
  else
    log "starting Kafka $version on 127.0.0.1:$port (state in $state)"
  fi
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

# shellcheck source=kafka/cluster.sh
. "$root/scripts/kafka/cluster.sh"

case "${1:-}" in
  fetch) fetch ;;
  up) up ;;
  down) down ;;
  status) probe ;;
  cluster-up) cluster_up ;;
  cluster-down) cluster_down ;;
  cluster-status) cluster_status ;;
  node-kill) node_kill "${2:-}" ;;
  node-stop) node_stop "${2:-}" ;;
  node-start) node_start "${2:-}" ;;
  *)
    echo "usage: $0 fetch|up|down|status|cluster-up|cluster-down|cluster-status|node-kill N|node-stop N|node-start N" >&2
    exit 2
    ;;
esac
