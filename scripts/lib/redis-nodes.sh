# Shell helpers shared by scripts/redis-cluster.sh and scripts/redis-sentinel.sh, which source
# this file after setting REDIS_SERVER, REDIS_CLI, BASE_DIR (one subdirectory per port, holding
# redis.pid), HOST and LOG_TAG.

log() { printf '[%s] %s\n' "$LOG_TAG" "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

cli() { "$REDIS_CLI" -h "$HOST" -p "$1" "${@:2}" 2>/dev/null; }
alive() { [[ $(cli "$1" ping || true) == PONG ]]; }

# Polls `$2...` until it succeeds or $1 seconds have passed.
wait_for() {
  local timeout=$1
  shift
  local deadline=$((SECONDS + timeout))
  until "$@"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

pid_of() {
  local file=$BASE_DIR/$1/redis.pid
  [[ -f $file ]] && cat "$file"
  return 0
}

# True only for a live redis-server process listening on our port: a stale pid file never
# makes us signal an unrelated process.
our_process() {
  local pid=$1 port=$2
  [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "redis-server.*:$port"
}

# Stops the servers on the given ports (SHUTDOWN NOSAVE, then SIGKILL for one of ours that
# lingers) and removes BASE_DIR; fails if something still answers on one of them.
stop_nodes() {
  local p pid
  for p in "$@"; do
    pid=$(pid_of "$p")
    if alive "$p"; then cli "$p" shutdown nosave >/dev/null || true; fi
    if our_process "$pid" "$p"; then
      wait_for 10 bash -c "! kill -0 $pid 2>/dev/null" || kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  for p in "$@"; do
    wait_for 10 bash -c "! '$REDIS_CLI' -h $HOST -p $p ping >/dev/null 2>&1" ||
      die "something still answers on port $p (not started by this script?)"
  done
  rm -rf -- "$BASE_DIR"
  log "stopped; removed $BASE_DIR"
}
