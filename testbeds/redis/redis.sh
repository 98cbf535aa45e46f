#!/usr/bin/env bash
# A Redis server (Debian's redis-server) on loopback, for tests and local clusters: no
# persistence (no RDB snapshots, no AOF), its state in a directory of its own.
#
#   testbeds/redis/redis.sh start     install redis-server with apt-get if missing (as root),
#                                     start, wait until it answers PING; prints redis://addr
#   testbeds/redis/redis.sh stop      stop it (SHUTDOWN NOSAVE, then SIGKILL after 10 s)
#   testbeds/redis/redis.sh kill      SIGKILL, at once (a server that dies mid-run)
#   testbeds/redis/redis.sh pause     SIGSTOP: connections stay open, nothing is answered
#   testbeds/redis/redis.sh resume    SIGCONT
#   testbeds/redis/redis.sh restart   stop, then start on the same port
#   testbeds/redis/redis.sh status    exit 0 if it runs
#   testbeds/redis/redis.sh wipe      stop and delete its directory
#
# Environment: REDIS_PORT (default 16379), REDIS_DIR (state: config, log, pid; default
# testbeds/.run/redis), REDIS_PASSWORD_FILE (if set, the server requires that password).
set -euo pipefail

here="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd -- "$here/../.." && pwd)"
dir="${REDIS_DIR:-$root/testbeds/.run/redis}"
port="${REDIS_PORT:-16379}"
pidfile="$dir/redis.pid"
logfile="$dir/redis.log"
conf="$dir/redis.conf"

log() { printf 'redis: %s\n' "$*" >&2; }

need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
    log "installing $2 with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null
  fi
  command -v "$1" >/dev/null 2>&1 || { log "$1 is needed: install $2"; exit 1; }
}

# Alive: the process exists and is not a zombie waiting for a parent to reap it.
alive() { kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]; }

running() { [[ -f "$pidfile" ]] && alive "$(cat "$pidfile")"; }

cli() {
  local auth=()
  if [[ -n "${REDIS_PASSWORD_FILE:-}" ]]; then
    auth=(--no-auth-warning -a "$(cat "$REDIS_PASSWORD_FILE")")
  fi
  redis-cli -h 127.0.0.1 -p "$port" "${auth[@]}" "$@"
}

write_config() {
  mkdir -p "$dir"
  {
    echo "bind 127.0.0.1"
    echo "port $port"
    echo "protected-mode yes"
    echo "daemonize no"
    echo "dir $dir"
    echo "save \"\""
    echo "appendonly no"
    echo "logfile $logfile"
    echo "pidfile $dir/redis-self.pid"
    if [[ -n "${REDIS_PASSWORD_FILE:-}" ]]; then
      echo "requirepass $(cat "$REDIS_PASSWORD_FILE")"
    fi
  } >"$conf"
  chmod 600 "$conf"
}

start() {
  if running; then
    log "already running (pid $(cat "$pidfile"))"
    echo "redis://127.0.0.1:$port"
    return 0
  fi
  need redis-server redis-server
  need redis-cli redis-tools
  write_config
  log "starting redis-server on 127.0.0.1:$port (log: $logfile)"
  nohup redis-server "$conf" >>"$dir/stdout.log" 2>&1 &
  echo $! >"$pidfile"
  local deadline=$((SECONDS + 20))
  until [[ "$(cli ping 2>/dev/null || true)" == "PONG" ]]; do
    if ! running; then
      log "redis-server exited; the end of its log:"
      tail -n 20 "$logfile" "$dir/stdout.log" >&2 2>/dev/null || true
      exit 1
    fi
    if ((SECONDS > deadline)); then
      log "redis-server did not answer within 20 s"
      stop
      exit 1
    fi
    sleep 0.05
  done
  log "ready"
  echo "redis://127.0.0.1:$port"
}

stop() {
  running || { rm -f "$pidfile"; return 0; }
  local pid
  pid="$(cat "$pidfile")"
  log "stopping redis-server (pid $pid)"
  cli shutdown nosave >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 10))
  while alive "$pid"; do
    if ((SECONDS > deadline)); then
      log "not stopped after 10 s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.05
  done
  rm -f "$pidfile"
}

kill_now() {
  running || { rm -f "$pidfile"; return 0; }
  local pid
  pid="$(cat "$pidfile")"
  kill -KILL "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 10))
  while alive "$pid" && ((SECONDS <= deadline)); do sleep 0.02; done
  rm -f "$pidfile"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  kill) kill_now ;;
  pause) if running; then kill -STOP "$(cat "$pidfile")"; fi ;;
  resume) if running; then kill -CONT "$(cat "$pidfile")"; fi ;;
  restart) stop; start ;;
  status) running ;;
  wipe) stop; rm -rf "$dir" ;;
  *) echo "usage: $0 start|stop|kill|pause|resume|restart|status|wipe" >&2; exit 2 ;;
esac
