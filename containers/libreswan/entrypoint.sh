#!/bin/bash
# libreswan image entrypoint: pluto, configured by ipsec.conf.
#
#   pluto (default)  start pluto with /etc/ipsec-interop/ipsec.conf, run until stopped
#   idle             start nothing (the harness execs pluto itself)
#   anything else    run it as given (e.g. `ipsec --version`)
#
# Configuration (/etc/ipsec-interop): ipsec.conf (required; its connections with auto=add or
# auto=start are loaded at start); ipsec.secrets (optional: PSKs and key references); nss/
# (optional: an NSS database with certificates and keys, used instead of the empty one).
# Logs (/var/log/ipsec-interop): pluto.log. Control socket: /run/pluto/pluto.ctl (whack's
# default), so `docker exec NAME ipsec whack --status` works.
II_IMAGE=libreswan
. /usr/local/lib/ipsec-interop/entrypoint-lib.sh

case "${1:-pluto}" in
  pluto) ;;
  idle) ii_idle ;;
  *) exec "$@" ;;
esac

ii_require_config ipsec.conf
ii_require_net_admin

nssdir=/var/lib/ipsec/nss
if [ -d "$II_CONF/nss" ]; then
  cp -a "$II_CONF/nss/." "$nssdir/" || ii_die $EXIT_CONFIG "cannot copy $II_CONF/nss"
fi
if [ -r "$II_CONF/ipsec.secrets" ]; then
  cp "$II_CONF/ipsec.secrets" /etc/ipsec.secrets
else
  : >/etc/ipsec.secrets
fi
chmod 600 /etc/ipsec.secrets

# Pluto reads (and addconn checks) the configuration at start; a syntax error is a config error.
if ! /usr/libexec/ipsec/addconn --config "$II_CONF/ipsec.conf" --checkconfig \
    >"$II_LOG/addconn-check.log" 2>&1; then
  cat "$II_LOG/addconn-check.log" >&2
  ii_die $EXIT_CONFIG "invalid $II_CONF/ipsec.conf (see $II_LOG/addconn-check.log)"
fi

mkdir -p /run/pluto
rm -f /run/pluto/pluto.ctl /run/pluto/pluto.pid
ii_log "starting pluto ($(cat /usr/share/ipsec-interop/versions))"
/usr/libexec/ipsec/pluto --config "$II_CONF/ipsec.conf" --secretsfile /etc/ipsec.secrets \
  --nssdir "$nssdir" --rundir /run/pluto --nofork --stderrlog >>"$II_LOG/pluto.log" 2>&1 &
II_CHILD=$!
echo "$II_CHILD" >"$II_RUN/pluto.pid"

ii_wait_for 15 "$II_CHILD" /usr/libexec/ipsec/whack --status \
  || ii_die $EXIT_ENVIRONMENT "pluto did not answer whack (see $II_LOG/pluto.log)"
ii_log "pluto running (pid $II_CHILD)"
touch "$II_RUN/ready"
ii_supervise
