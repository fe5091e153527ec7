# Shared by the entrypoints of the ipsec-interop images (sourced, bash).
#
# The contract every image keeps (containers/README.md, "Entrypoint contract"):
#   /etc/ipsec-interop/      configuration, mounted read-only or copied in before the start
#   /var/log/ipsec-interop/  logs; mount a folder here to keep them
#   /run/ipsec-interop/      control sockets and pid files
# Exit codes: 0 stopped on request (SIGTERM/SIGINT), 2 configuration missing or invalid,
# 3 environment (no /dev/net/tun, no NET_ADMIN, the daemon did not start or died).
# The same codes as `ipsec-interop` itself (harness/exitcodes.py).

set -uo pipefail

readonly II_CONF=/etc/ipsec-interop
readonly II_LOG=/var/log/ipsec-interop
readonly II_RUN=/run/ipsec-interop
readonly EXIT_CONFIG=2
readonly EXIT_ENVIRONMENT=3

mkdir -p "$II_LOG" "$II_RUN"

ii_log() {
  # One line to stderr (docker logs) and to the entrypoint log in the log folder.
  local line
  line="$(date -u +%H:%M:%S) ${II_IMAGE:-ipsec-interop}: $*"
  echo "$line" >&2
  echo "$line" >>"$II_LOG/entrypoint.log" 2>/dev/null || true
}

ii_die() {
  # ii_die CODE MESSAGE: say why and exit with CODE.
  local code=$1
  shift
  ii_log "error: $*"
  exit "$code"
}

ii_require_config() {
  # ii_require_config FILE...: every file must exist under /etc/ipsec-interop.
  local f
  for f in "$@"; do
    [ -r "$II_CONF/$f" ] || ii_die $EXIT_CONFIG \
      "missing $II_CONF/$f (mount the configuration folder at $II_CONF, see containers/README.md)"
  done
}

ii_require_tun() {
  [ -c /dev/net/tun ] || ii_die $EXIT_ENVIRONMENT \
    "no /dev/net/tun: run with --device /dev/net/tun (and --cap-add NET_ADMIN)"
}

ii_require_net_admin() {
  # CAP_NET_ADMIN is bit 12 of the effective capability set.
  local eff
  eff=$(awk '/^CapEff:/ {print $2}' /proc/self/status)
  if (( (16#$eff >> 12) & 1 )); then
    return 0
  fi
  ii_die $EXIT_ENVIRONMENT "no CAP_NET_ADMIN: run with --cap-add NET_ADMIN"
}

ii_wait_for() {
  # ii_wait_for SECONDS PID TEST...: poll TEST until it succeeds; fail if PID ends or time runs out.
  local seconds=$1 pid=$2
  shift 2
  local deadline=$((SECONDS + seconds))
  until "$@" >/dev/null 2>&1; do
    kill -0 "$pid" 2>/dev/null || return 1
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
}

II_CHILD=""
II_STOPPING=0

ii_on_signal() {
  II_STOPPING=1
  [ -n "$II_CHILD" ] && kill -TERM "$II_CHILD" 2>/dev/null
}

ii_supervise() {
  # ii_supervise: wait for $II_CHILD; exit 0 if it ended because we were asked to stop,
  # else 3 (the daemon died on its own).
  local rc
  while :; do
    wait "$II_CHILD"
    rc=$?
    kill -0 "$II_CHILD" 2>/dev/null || break   # wait returned for a signal, not an exit
  done
  if [ "$II_STOPPING" = 1 ]; then
    ii_log "stopped on request (daemon exit status $rc)"
    exit 0
  fi
  ii_die $EXIT_ENVIRONMENT "daemon exited unexpectedly with status $rc (see $II_LOG)"
}

ii_idle() {
  # No daemon: the harness starts its own processes with docker exec.
  trap 'exit 0' TERM INT
  touch "$II_RUN/idle"
  ii_log "idle: waiting for docker exec"
  sleep infinity &
  wait $!
}

trap ii_on_signal TERM INT
