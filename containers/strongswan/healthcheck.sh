#!/bin/sh
# Healthy when charon answers on vici and the configuration was loaded (or in idle mode).
[ -e /run/ipsec-interop/idle ] && exit 0
[ -e /run/ipsec-interop/ready ] || exit 1
exec swanctl --stats >/dev/null 2>&1
