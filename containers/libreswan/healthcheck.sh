#!/bin/sh
# Healthy when pluto answers whack (or in idle mode).
[ -e /run/ipsec-interop/idle ] && exit 0
[ -e /run/ipsec-interop/ready ] || exit 1
exec /usr/libexec/ipsec/whack --status >/dev/null 2>&1
