#!/usr/bin/env bash
# A local Redis Sentinel deployment for sessionflow's tests: a master on 127.0.0.1:7201, its
# replica on :7202, and one Sentinel on :7211 watching them as "sfmaster" (quorum 1, so a
# failover needs no second Sentinel).
#
#   scripts/redis-sentinel.sh start    start (or repair) it; a no-op when it is already healthy
#   scripts/redis-sentinel.sh stop     stop the three processes and remove their directory
#   scripts/redis-sentinel.sh status   one line per process; exit 0 only when it is healthy
#
# After a failover the two data nodes have swapped roles; "healthy" only asks that the Sentinel
# names a master that answers as one, with a replica whose link is up, known to the Sentinel.
# Environment: REDIS_SERVER, REDIS_CLI (binaries), SF_SENTINEL_DIR, SF_SENTINEL_TIMEOUT (seconds).
set -euo pipefail

REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
BASE_DIR=${SF_SENTINEL_DIR:-/tmp/sessionflow-redis-sentinel}
TIMEOUT=${SF_SENTINEL_TIMEOUT:-60}
HOST=127.0.0.1
MASTER=7201
REPLICA=7202
SENTINEL=7211
NAME=sfmaster
DATA_PORTS=("$MASTER" "$REPLICA")

LOG_TAG=redis-sentinel
# shellcheck source=lib/redis-nodes.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/redis-nodes.sh"

start_data_node() {
  local port=$1 dir=$BASE_DIR/$1
  shift
  mkdir -p "$dir"
  "$REDIS_SERVER" --port "$port" --bind "$HOST" --dir "$dir" --save "" --appendonly no \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" "$@" >/dev/null
}

start_sentinel() {
  local dir=$BASE_DIR/$SENTINEL
  mkdir -p "$dir"
  # The Sentinel rewrites its configuration file as it learns the topology, so it gets its own.
  cat >"$dir/sentinel.conf" <<EOF
port $SENTINEL
bind $HOST
dir $dir
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
sentinel monitor $NAME $HOST $MASTER 1
sentinel down-after-milliseconds $NAME 3000
sentinel failover-timeout $NAME 10000
sentinel parallel-syncs $NAME 1
EOF
  "$REDIS_SERVER" "$dir/sentinel.conf" --sentinel >/dev/null
}

# "host port" of the master the Sentinel names, empty when it names none.
named_master() {
  cli "$SENTINEL" sentinel get-master-addr-by-name "$NAME" | tr '\n' ' ' | sed 's/ *$//'
}

# Healthy = the Sentinel names a master, that node answers role master with one connected
# replica, the replica's link is up, and the Sentinel sees that replica as an up-to-date replica.
healthy() {
  local addr port other
  addr=$(named_master) || return 1
  port=${addr##* }
  [[ $port == "$MASTER" || $port == "$REPLICA" ]] || return 1
  other=$([[ $port == "$MASTER" ]] && echo "$REPLICA" || echo "$MASTER")
  [[ $(cli "$port" info replication | tr -d '\r' | grep -E '^(role|connected_slaves):' | tr '\n' ' ') == "role:master connected_slaves:1 " ]] || return 1
  cli "$other" info replication | tr -d '\r' | grep -qx 'master_link_status:up' || return 1
  # SENTINEL REPLICAS answers one flat list of field names and values per replica. After a
  # failover the Sentinel's view of the old master lags (it re-reads INFO every 10 s), and a
  # second failover before it has caught up would find no replica to promote.
  cli "$SENTINEL" sentinel replicas "$NAME" | tr -d '\r' | awk -v p="$other" '
    NR % 2 == 1 { field = $0; next }
    { v[field] = $0 }
    field == "port" && $0 == p { found = 1 }
    END { exit !(found && v["flags"] == "slave" && v["role-reported"] == "slave" && v["master-link-status"] == "ok") }'
}

cmd_start() {
  command -v "$REDIS_SERVER" >/dev/null || die "$REDIS_SERVER not found"
  local started=0
  # A restart begins from the initial roles: both data nodes are new (no persistence), so the
  # Sentinel's memory of an earlier failover is thrown away with its configuration file.
  if ! alive "$MASTER" || ! alive "$REPLICA" || ! alive "$SENTINEL"; then
    cmd_stop >/dev/null 2>&1 || true
    start_data_node "$MASTER"
    start_data_node "$REPLICA" --replicaof "$HOST" "$MASTER"
    wait_for "$TIMEOUT" alive "$MASTER" || die "the master did not answer within ${TIMEOUT}s"
    wait_for "$TIMEOUT" alive "$REPLICA" || die "the replica did not answer within ${TIMEOUT}s"
    start_sentinel
    wait_for "$TIMEOUT" alive "$SENTINEL" || die "the Sentinel did not answer within ${TIMEOUT}s"
    started=1
  fi
  if ((started == 0)) && healthy; then
    log "already running and healthy"
    return 0
  fi
  wait_for "$TIMEOUT" healthy || {
    cmd_status || true
    die "not healthy within ${TIMEOUT}s (see $BASE_DIR/*/redis.log); try: $0 stop && $0 start"
  }
  log "sentinel ok: $NAME at $(named_master), Sentinel on $HOST:$SENTINEL"
}

cmd_stop() { stop_nodes "$SENTINEL" "${DATA_PORTS[@]}"; }

cmd_status() {
  local p role
  for p in "${DATA_PORTS[@]}"; do
    if alive "$p"; then
      role=$(cli "$p" info replication | tr -d '\r' | grep '^role:' | cut -d: -f2)
      printf '%s:%s pid=%s role=%s\n' "$HOST" "$p" "$(pid_of "$p")" "$role"
    else
      printf '%s:%s down\n' "$HOST" "$p"
    fi
  done
  if alive "$SENTINEL"; then
    printf '%s:%s pid=%s sentinel, master %s\n' "$HOST" "$SENTINEL" "$(pid_of "$SENTINEL")" "$(named_master)"
  else
    printf '%s:%s down (sentinel)\n' "$HOST" "$SENTINEL"
  fi
  if healthy; then
    echo "sentinel: healthy"
  else
    echo "sentinel: not healthy"
    return 1
  fi
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
*)
  echo "usage: $0 start|stop|status" >&2
  exit 2
  ;;
esac
