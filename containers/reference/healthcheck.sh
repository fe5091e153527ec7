#!/bin/sh
# Healthy when the node accepts connections on its control socket (or in idle mode).
[ -e /run/ipsec-interop/idle ] && exit 0
exec python3 - <<'PY'
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(3)
try:
    s.connect(os.environ.get("IPSEC_INTEROP_CONTROL", "/run/ipsec-interop/node.sock"))
except OSError:
    sys.exit(1)
PY
