#!/usr/bin/env bash
# A local Redis Cluster for sessionflow's tests: 3 masters + 3 replicas on 127.0.0.1:7101-7106.
#
#   scripts/redis-cluster.sh start    start (or repair) the cluster; a no-op when it is already healthy
#   scripts/redis-cluster.sh stop     stop every node and remove the data directories
#   scripts/redis-cluster.sh status   one line per node; exit 0 only when the cluster is healthy
#
# Every wait polls the servers with a deadline: nothing sleeps for a fixed time and hopes.
# Environment: REDIS_SERVER, REDIS_CLI (binaries), SF_CLUSTER_DIR, SF_CLUSTER_TIMEOUT (seconds).
set -euo pipefail

REDIS_SERVER=${REDIS_SERVER:-redis-server}
REDIS_CLI=${REDIS_CLI:-redis-cli}
BASE_DIR=${SF_CLUSTER_DIR:-/tmp/sessionflow-redis-cluster}
TIMEOUT=${SF_CLUSTER_TIMEOUT:-60}
HOST=127.0.0.1
PORTS=(7101 7102 7103 7104 7105 7106)

LOG_TAG=redis-cluster
# shellcheck source=lib/redis-nodes.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/redis-nodes.sh"

# One redis-cli call per node (process start-up dominates the cost of a poll): prints
# "cluster_state known_nodes slots_assigned role connected_slaves master_link_status",
# with "-" for fields the node does not report.
state() {
  printf 'CLUSTER INFO\nINFO replication\n' | cli "$1" | tr -d '\r' | awk -F: '
    { v[$1] = $2 }
    END {
      n = split("cluster_state cluster_known_nodes cluster_slots_assigned role connected_slaves master_link_status", k, " ")
      for (i = 1; i <= n; i++) printf "%s%s", (k[i] in v ? v[k[i]] : "-"), (i < n ? " " : "\n")
    }'
}

start_node() {
  local port=$1 dir=$BASE_DIR/$1
  mkdir -p "$dir"
  "$REDIS_SERVER" --port "$port" --bind "$HOST" --dir "$dir" \
    --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 2000 \
    --save "" --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null
}

all_alive() {
  local p
  for p in "${PORTS[@]}"; do alive "$p" || return 1; done
}

# Healthy = every node answers cluster_state:ok, 3 masters each with a replica whose link is up.
# Replicas that are still syncing would make WAIT-based tests flaky, hence the link check.
healthy() {
  local p masters=0 cstate known slots role slaves link
  for p in "${PORTS[@]}"; do
    read -r cstate known slots role slaves link <<<"$(state "$p")" || return 1
    [[ $cstate == ok && $known == "${#PORTS[@]}" ]] || return 1
    if [[ $role == master ]]; then
      masters=$((masters + 1))
      [[ $slaves =~ ^[0-9]+$ ]] && ((slaves >= 1)) || return 1
    else
      [[ $link == up ]] || return 1
    fi
  done
  ((masters == ${#PORTS[@]} / 2))
}

# A node that has never joined a cluster knows only itself and serves no slots.
pristine() {
  local p cstate known slots rest
  for p in "${PORTS[@]}"; do
    read -r cstate known slots rest <<<"$(state "$p")" || return 1
    [[ $known == 1 && $slots == 0 ]] || return 1
  done
}

cmd_start() {
  command -v "$REDIS_SERVER" >/dev/null || die "$REDIS_SERVER not found"
  local p started=0
  for p in "${PORTS[@]}"; do
    if alive "$p"; then continue; fi
    start_node "$p"
    started=$((started + 1))
  done
  wait_for "$TIMEOUT" all_alive || die "nodes did not answer PING within ${TIMEOUT}s (see $BASE_DIR/*/redis.log)"
  if ((started == 0)) && healthy; then
    log "already running and healthy"
    return 0
  fi
  if pristine; then
    local addrs=()
    for p in "${PORTS[@]}"; do addrs+=("$HOST:$p"); done
    log "creating the cluster (${#PORTS[@]} nodes, 1 replica per master)"
    "$REDIS_CLI" --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >/dev/null ||
      die "redis-cli --cluster create failed"
  else
    log "nodes already belong to a cluster: waiting for them to converge"
  fi
  wait_for "$TIMEOUT" healthy || {
    cmd_status || true
    die "cluster not healthy within ${TIMEOUT}s; try: $0 stop && $0 start"
  }
  log "cluster ok on ${PORTS[*]}"
}

cmd_stop() { stop_nodes "${PORTS[@]}"; }

cmd_status() {
  local p cstate known slots role rest down=0
  for p in "${PORTS[@]}"; do
    if alive "$p"; then
      read -r cstate known slots role rest <<<"$(state "$p")"
      printf '%s:%s pid=%s role=%s cluster_state=%s\n' "$HOST" "$p" "$(pid_of "$p")" "$role" "$cstate"
    else
      printf '%s:%s down\n' "$HOST" "$p"
      down=1
    fi
  done
  if ((down == 0)) && healthy; then
    echo "cluster: healthy"
  else
    echo "cluster: not healthy"
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
