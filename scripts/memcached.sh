#!/usr/bin/env bash
# Starts or stops the two loopback memcached instances the memcached store tests run against.
#
#   scripts/memcached.sh start    start 127.0.0.1:11211 and 127.0.0.1:11212 (idempotent)
#   scripts/memcached.sh stop     stop the instances this script started (by pidfile)
#   scripts/memcached.sh status   say which ports answer
#
# Environment: MEMCACHED_PORTS (default "11211 11212"), MEMCACHED_RUN_DIR (pidfiles and logs,
# default /tmp/sessionflow-memcached), MEMCACHED_MEMORY_MB (default 64).
set -euo pipefail

read -r -a PORTS <<<"${MEMCACHED_PORTS:-11211 11212}"
RUN_DIR="${MEMCACHED_RUN_DIR:-/tmp/sessionflow-memcached}"
MEMORY_MB="${MEMCACHED_MEMORY_MB:-64}"
HOST=127.0.0.1

# True when the server on $1 answers the text protocol's `version` (a bound port alone is not enough:
# the daemon accepts connections a moment before it serves them).
answers() {
  local port=$1 line=''
  # A subshell owns the descriptor, so a refused connection or a silent server cannot leak it.
  line=$(
    exec 2>/dev/null
    exec 3<>"/dev/tcp/$HOST/$port" || exit 1
    printf 'version\r\n' >&3
    IFS= read -r -t 1 reply <&3 || exit 1
    printf '%s' "$reply"
  ) || return 1
  [[ $line == VERSION* ]]
}

pid_alive() {
  local pidfile=$1
  [[ -s $pidfile ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

ensure_installed() {
  if command -v memcached >/dev/null 2>&1; then return; fi
  echo "memcached not found: installing it with apt-get" >&2
  if [[ $EUID -ne 0 ]]; then
    echo "memcached is missing and installing it needs root (apt-get install memcached)" >&2
    exit 1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq memcached >/dev/null
}

start_one() {
  local port=$1 pidfile="$RUN_DIR/memcached-$port.pid"
  if answers "$port"; then
    if pid_alive "$pidfile"; then
      echo "memcached already running on $HOST:$port (pid $(cat "$pidfile"))"
    else
      echo "memcached on $HOST:$port already answers (not started by this script; left alone)"
    fi
    return
  fi
  rm -f "$pidfile"
  # memcached refuses to run as root unless told which user to become.
  local user_args=()
  [[ $EUID -eq 0 ]] && user_args=(-u root)
  memcached -d "${user_args[@]}" -l "$HOST" -p "$port" -U 0 -m "$MEMORY_MB" -P "$pidfile"
  # Poll instead of sleeping blindly: up to 10 s in 50 ms steps.
  for _ in $(seq 1 200); do
    if answers "$port"; then
      echo "memcached started on $HOST:$port (pid $(cat "$pidfile" 2>/dev/null || echo '?'))"
      return
    fi
    sleep 0.05
  done
  echo "memcached on $HOST:$port did not answer 'version' within 10 s" >&2
  exit 1
}

stop_one() {
  local port=$1 pidfile="$RUN_DIR/memcached-$port.pid"
  if ! pid_alive "$pidfile"; then
    rm -f "$pidfile"
    echo "memcached on $HOST:$port: not started by this script (nothing to stop)"
    return
  fi
  local pid
  pid=$(cat "$pidfile")
  kill "$pid"
  for _ in $(seq 1 200); do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$pidfile"
      echo "memcached on $HOST:$port stopped (pid $pid)"
      return
    fi
    sleep 0.05
  done
  echo "memcached pid $pid did not exit within 10 s; sending SIGKILL" >&2
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$pidfile"
}

case "${1:-}" in
  start)
    ensure_installed
    mkdir -p "$RUN_DIR"
    for port in "${PORTS[@]}"; do start_one "$port"; done
    ;;
  stop)
    for port in "${PORTS[@]}"; do stop_one "$port"; done
    ;;
  status)
    code=0
    for port in "${PORTS[@]}"; do
      if answers "$port"; then echo "$HOST:$port up"; else echo "$HOST:$port down"; code=1; fi
    done
    exit "$code"
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
