# A 3-broker KRaft cluster on loopback for failure tests; sourced by scripts/local-kafka.sh, which
# provides fetch, log, running_pid, $root, $version, $libs, $log_config and $python.
#
#   cluster-up       fetch, format (once), start every node not running, wait until each lists 3 brokers
#   cluster-down     SIGTERM every node at once, SIGKILL what is left after $KAFKA_STOP_TIMEOUT (20) s
#   cluster-status   one line per node; exit 0 when every node answers and lists 3 brokers
#   node-kill N      SIGKILL node N (a crash: no controlled shutdown)
#   node-stop N      SIGTERM node N and wait for it (a controlled shutdown)
#   node-start N     start node N again and wait until it answers
#
# Environment: KAFKA_CLUSTER_PORT (default 19700): node N (1-3) serves clients on
# KAFKA_CLUSTER_PORT+2(N-1) and its controller on the port after; KAFKA_CLUSTER_STATE_DIR (default
# .local/kafka-cluster-$KAFKA_CLUSTER_PORT); KAFKA_CLUSTER_HEAP (default 384m per node);
# KAFKA_AUTO_CREATE_TOPICS (default false here); KAFKA_VERSION as for the single broker.
#
# KAFKA_CLUSTER_LAYOUT=combined (default): three broker+controller nodes, voters 1,2,3. Losing two
# of them loses the controller quorum too, so the survivor cannot shrink an ISR and acks=all
# produce times out instead of failing with NOT_ENOUGH_REPLICAS.
# KAFKA_CLUSTER_LAYOUT=split: brokers 1-3 plus a controller-only node 0 on KAFKA_CLUSTER_PORT+6,
# so brokers can die while the quorum lives (the production shape, one JVM more).
#
# The replication settings are the production ones: RF 3, min.insync.replicas 2. Brokers are fenced
# 6 s after their last heartbeat (default 9 s) so a killed node drops out of ISRs quickly.

cluster_base=${KAFKA_CLUSTER_PORT:-19700}
cluster_state=${KAFKA_CLUSTER_STATE_DIR:-$root/.local/kafka-cluster-$cluster_base}
cluster_heap=${KAFKA_CLUSTER_HEAP:-384m}
cluster_layout=${KAFKA_CLUSTER_LAYOUT:-combined}
cluster_auto_create=${KAFKA_AUTO_CREATE_TOPICS:-false}
cluster_brokers=(1 2 3)

node_port() { echo $((cluster_base + 2 * ($1 - 1))); }
node_controller_port() {
  if [ "$1" = 0 ]; then echo $((cluster_base + 6)); else echo $((cluster_base + 2 * ($1 - 1) + 1)); fi
}
node_dir() { echo "$cluster_state/node$1"; }

cluster_nodes() {
  if [ "$cluster_layout" = split ]; then echo 0 1 2 3; else echo 1 2 3; fi
}

cluster_voters() {
  if [ "$cluster_layout" = split ]; then
    echo "0@127.0.0.1:$(node_controller_port 0)"
  else
    local n voters=()
    for n in "${cluster_brokers[@]}"; do voters+=("$n@127.0.0.1:$(node_controller_port "$n")"); done
    (IFS=,; echo "${voters[*]}")
  fi
}

cluster_bootstrap() {
  local n addresses=()
  for n in "${cluster_brokers[@]}"; do addresses+=("127.0.0.1:$(node_port "$n")"); done
  (IFS=,; echo "${addresses[*]}")
}

check_node() {
  case "$1" in
    1 | 2 | 3) ;;
    0) [ "$cluster_layout" = split ] || { log "node 0 exists only with KAFKA_CLUSTER_LAYOUT=split"; exit 2; } ;;
    *) log "node must be 1, 2 or 3 (0: the split layout's controller)"; exit 2 ;;
  esac
}

write_node_properties() {
  local n=$1 dir port cport roles listeners advertised
  dir=$(node_dir "$n")
  port=$(node_port "$n")
  cport=$(node_controller_port "$n")
  if [ "$n" = 0 ]; then
    roles=controller
    listeners="CONTROLLER://127.0.0.1:$cport"
  elif [ "$cluster_layout" = split ]; then
    roles=broker
    listeners="PLAINTEXT://127.0.0.1:$port"
  else
    roles=broker,controller
    listeners="PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$cport"
  fi
  cat > "$dir/server.properties" <<PROPS
process.roles=$roles
node.id=$n
controller.quorum.voters=$(cluster_voters)
listeners=$listeners
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$dir/data
# Controllers need this too: with eligible leader replicas (4.x) the active controller records its
# own min.insync.replicas as the cluster-wide default, which then overrides the brokers' setting.
min.insync.replicas=2
default.replication.factor=3
PROPS
  if [ "$n" != 0 ]; then
    cat >> "$dir/server.properties" <<PROPS
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
num.partitions=3
auto.create.topics.enable=$cluster_auto_create
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
group.initial.rebalance.delay.ms=0
replica.lag.time.max.ms=10000
message.max.bytes=16777216
replica.fetch.max.bytes=16777216
PROPS
  fi
  cat >> "$dir/server.properties" <<PROPS
broker.heartbeat.interval.ms=1000
broker.session.timeout.ms=6000
PROPS
}

node_java_cmd() {
  local dir
  dir=$(node_dir "$1")
  node_java=(java "-Xms$cluster_heap" "-Xmx$cluster_heap" -XX:+UseG1GC -Djava.awt.headless=true
    "${log_config[@]}" "-Dkafka.logs.dir=$dir/logs" -cp "$libs/*")
}

# Start node N's JVM if it is not running; does not wait.
node_launch() {
  local n=$1 dir pid
  dir=$(node_dir "$n")
  if pid=$(running_pid "$dir/kafka.pid"); then
    log "node $n already running (pid $pid)"
    return 0
  fi
  node_java_cmd "$n"
  nohup "${node_java[@]}" kafka.Kafka "$dir/server.properties" > "$dir/logs/stdout.log" 2>&1 &
  echo $! > "$dir/kafka.pid"
}

# Wait until node N answers a metadata request listing at least $2 brokers.
node_wait() {
  local n=$1 brokers=$2 timeout=${3:-120}
  if [ "$n" = 0 ]; then
    # A controller-only node serves no clients; its port open is all there is to see.
    "$python" - "$(node_controller_port 0)" "$timeout" <<'PY' || return 1
import socket, sys, time
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2).close()
        break
    except OSError:
        if time.monotonic() > deadline:
            sys.exit(1)
        time.sleep(0.5)
PY
    return 0
  fi
  "$python" "$root/scripts/kafka_probe.py" "127.0.0.1:$(node_port "$n")" --wait "$timeout" \
    --brokers "$brokers" >&2
}

cluster_up() {
  fetch
  case "$cluster_layout" in
    combined | split) ;;
    *) log "KAFKA_CLUSTER_LAYOUT must be combined or split"; exit 2 ;;
  esac
  case "$cluster_auto_create" in
    true | false) ;;
    *) log "KAFKA_AUTO_CREATE_TOPICS must be true or false"; exit 2 ;;
  esac
  mkdir -p "$cluster_state"
  if [ -f "$cluster_state/cluster.layout" ] &&
    { [ "$(cat "$cluster_state/cluster.layout")" != "$cluster_layout" ] ||
      [ "$(cat "$cluster_state/kafka.version")" != "$version" ]; }; then
    log "$cluster_state holds a $(cat "$cluster_state/cluster.layout") cluster of Kafka" \
      "$(cat "$cluster_state/kafka.version"), not $cluster_layout $version; remove it or use another" \
      "KAFKA_CLUSTER_STATE_DIR"
    exit 1
  fi
  local n dir
  if [ ! -f "$cluster_state/cluster.id" ]; then
    node_java_cmd 1
    "${node_java[@]}" kafka.tools.StorageTool random-uuid | tail -n 1 > "$cluster_state/cluster.id"
    echo "$version" > "$cluster_state/kafka.version"
    echo "$cluster_layout" > "$cluster_state/cluster.layout"
  fi
  for n in $(cluster_nodes); do
    dir=$(node_dir "$n")
    mkdir -p "$dir/logs"
    write_node_properties "$n"
    if [ ! -f "$dir/data/meta.properties" ]; then
      node_java_cmd "$n"
      "${node_java[@]}" kafka.tools.StorageTool format -t "$(cat "$cluster_state/cluster.id")" \
        -c "$dir/server.properties" > "$dir/logs/format.log" 2>&1 ||
        { cat "$dir/logs/format.log" >&2; exit 1; }
    fi
  done
  write_cluster_info
  log "starting a $cluster_layout 3-broker Kafka $version cluster on $(cluster_bootstrap)" \
    "(state in $cluster_state)"
  for n in $(cluster_nodes); do node_launch "$n"; done
  for n in $(cluster_nodes); do
    if ! node_wait "$n" 3 180; then
      log "node $n did not come up within 180 s; last log lines:"
      tail -n 30 "$(node_dir "$n")/logs/stdout.log" "$(node_dir "$n")/logs/server.log" >&2 || true
      cluster_down
      exit 1
    fi
  done
  log "cluster ready on $(cluster_bootstrap)"
}

# cluster.json: what tests read (bootstrap, and per node its port, pid file and log directory).
write_cluster_info() {
  STATE=$cluster_state VERSION=$version LAYOUT=$cluster_layout BOOTSTRAP=$(cluster_bootstrap) \
    NODES="$(for n in $(cluster_nodes); do
      echo "$n $(node_port "$n") $(node_controller_port "$n")"; done)" "$python" - <<'PY'
import json, os
state = os.environ["STATE"]
nodes = []
for line in os.environ["NODES"].splitlines():
    node, port, cport = (int(x) for x in line.split())
    nodes.append({
        "node_id": node,
        "bootstrap": None if node == 0 else f"127.0.0.1:{port}",
        "controller_port": cport,
        "pid_file": f"{state}/node{node}/kafka.pid",
        "log_dir": f"{state}/node{node}/logs",
    })
info = {
    "kafka_version": os.environ["VERSION"],
    "layout": os.environ["LAYOUT"],
    "bootstrap": os.environ["BOOTSTRAP"],
    "replication_factor": 3,
    "min_insync_replicas": 2,
    "nodes": nodes,
}
with open(f"{state}/cluster.json", "w") as out:
    json.dump(info, out, indent=2)
    out.write("\n")
PY
}

cluster_down() {
  local n pid pids=()
  for n in $(cluster_nodes); do
    if pid=$(running_pid "$(node_dir "$n")/kafka.pid"); then
      kill -TERM "$pid"
      pids+=("$pid")
    fi
    rm -f "$(node_dir "$n")/kafka.pid"
  done
  for _ in $(seq 1 $((${KAFKA_STOP_TIMEOUT:-20} * 10))); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      log "pid $pid still alive after ${KAFKA_STOP_TIMEOUT:-20} s, sending SIGKILL"
      kill -KILL "$pid" || true
    fi
  done
  log "cluster stopped (${#pids[@]} node(s) were running)"
}

cluster_status() {
  local n pid ok=0 state
  for n in $(cluster_nodes); do
    if pid=$(running_pid "$(node_dir "$n")/kafka.pid"); then
      if node_wait "$n" 3 0 2>/dev/null; then state=up; else state="running, not ready"; ok=1; fi
      echo "node $n: $state (pid $pid, port $(node_port "$n"))"
    else
      echo "node $n: down (port $(node_port "$n"))"
      ok=1
    fi
  done
  return $ok
}

node_kill() {
  check_node "$1"
  local dir pid
  dir=$(node_dir "$1")
  if ! pid=$(running_pid "$dir/kafka.pid"); then
    log "node $1 is not running"
    return 0
  fi
  kill -KILL "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  rm -f "$dir/kafka.pid"
  log "node $1 killed (pid $pid)"
}

node_stop() {
  check_node "$1"
  local dir pid
  dir=$(node_dir "$1")
  if ! pid=$(running_pid "$dir/kafka.pid"); then
    log "node $1 is not running"
    return 0
  fi
  kill -TERM "$pid"
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "node $1 still alive after 30 s, sending SIGKILL"
    kill -KILL "$pid" || true
  fi
  rm -f "$dir/kafka.pid"
  log "node $1 stopped (pid $pid)"
}

node_start() {
  check_node "$1"
  [ -f "$(node_dir "$1")/data/meta.properties" ] || { log "no cluster in $cluster_state; run cluster-up"; exit 1; }
  node_launch "$1"
  if ! node_wait "$1" 1 120; then
    log "node $1 did not answer within 120 s"
    exit 1
  fi
  log "node $1 up on 127.0.0.1:$(node_port "$1")"
}
