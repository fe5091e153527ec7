#!/bin/bash
# strongSwan image entrypoint: charon with kernel-libipsec, configured by swanctl.
#
#   charon (default)  start charon, load /etc/ipsec-interop/swanctl.conf, run until stopped
#   idle              start nothing (the harness execs charon itself)
#   anything else     run it as given (e.g. `swanctl --version`)
#
# Configuration (/etc/ipsec-interop): swanctl.conf (required); strongswan.conf (optional,
# read after the image defaults of /etc/strongswan.conf, so it can override any of them);
# x509/, x509ca/, private/, ... next to swanctl.conf as swanctl expects them.
# Logs (/var/log/ipsec-interop): charon.log at ike=4/chd=4, which prints every key (for the
# harness's oracle): test use only. vici socket: unix:///run/charon.vici (swanctl's default).
II_IMAGE=strongswan
. /usr/local/lib/ipsec-interop/entrypoint-lib.sh

case "${1:-charon}" in
  charon) ;;
  idle) ii_idle ;;
  *) exec "$@" ;;
esac

ii_require_config swanctl.conf
ii_require_tun
ii_require_net_admin

if [ -r "$II_CONF/strongswan.conf" ]; then
  ln -sf "$II_CONF/strongswan.conf" /etc/strongswan.d/ipsec-interop/local.conf
fi
rm -f /run/charon.vici /run/charon.pid
ii_log "starting charon ($(cat /usr/share/ipsec-interop/versions))"
/usr/lib/ipsec/charon >>"$II_LOG/charon.stdout.log" 2>&1 &
II_CHILD=$!
echo "$II_CHILD" >"$II_RUN/charon.pid"

ii_wait_for 15 "$II_CHILD" test -S /run/charon.vici \
  || ii_die $EXIT_ENVIRONMENT "charon did not open its vici socket (see $II_LOG/charon.log)"

# swanctl exits 0 even for a file it cannot parse: its messages tell. Credential folders
# (x509/, private/, ...) are looked up next to swanctl.conf; missing ones are fine.
load_failed() {
  grep -v "^opening directory .* failed: No such file or directory$" "$II_LOG/swanctl-load.log" \
    | grep -q -E "invalid config file|failed|error"
}
if ! swanctl --load-all --noprompt --file "$II_CONF/swanctl.conf" >"$II_LOG/swanctl-load.log" 2>&1 \
    || load_failed; then
  cat "$II_LOG/swanctl-load.log" >&2
  kill -TERM "$II_CHILD" 2>/dev/null
  wait "$II_CHILD" 2>/dev/null
  ii_die $EXIT_CONFIG "swanctl could not load $II_CONF/swanctl.conf (see $II_LOG/swanctl-load.log)"
fi
ii_log "configuration loaded; charon running (pid $II_CHILD)"
touch "$II_RUN/ready"
ii_supervise
