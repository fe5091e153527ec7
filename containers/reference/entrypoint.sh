#!/bin/bash
# Reference image entrypoint: our node, `ipsec-interop node`.
#
#   node (default)  run `ipsec-interop node --config /etc/ipsec-interop/node.yaml`
#   idle            start nothing (the harness execs the node, tcpdump or nft itself; also
#                   the mode of the capture/firewall sidecar)
#   anything else   run it as given (e.g. `ipsec-interop version`)
#
# Configuration (/etc/ipsec-interop): node.yaml (required), and the files it names (policy,
# certificates, keys) by paths under /etc/ipsec-interop. Its control endpoint should be the
# Unix socket /run/ipsec-interop/node.sock (the health check connects there; override with
# IPSEC_INTEROP_CONTROL) and its log file /var/log/ipsec-interop/node.log.
# The node's own exit codes pass through: 2 for an invalid configuration, as here.
II_IMAGE=reference
. /usr/local/lib/ipsec-interop/entrypoint-lib.sh

case "${1:-node}" in
  node) shift || true ;;
  idle) ii_idle ;;
  *) exec "$@" ;;
esac

ii_require_config node.yaml
ii_require_net_admin

ii_log "starting the reference node ($(ipsec-interop version))"
ipsec-interop node --config "$II_CONF/node.yaml" "$@" > >(tee -a "$II_LOG/node.stdout.log") 2>&1 &
II_CHILD=$!
echo "$II_CHILD" >"$II_RUN/node.pid"
touch "$II_RUN/ready"
# The node's own status is the container's: 0 on SIGTERM, 2 for a bad configuration, ...
while :; do
  wait "$II_CHILD"
  rc=$?
  kill -0 "$II_CHILD" 2>/dev/null || break
done
if [ "$II_STOPPING" = 1 ] && [ "$rc" -ge 128 ]; then
  rc=0
fi
ii_log "node exited with status $rc"
exit "$rc"
