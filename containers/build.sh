#!/usr/bin/env bash
# Builds the ipsec-interop images (reference, strongswan, libreswan) without the project
# installed: needs bash, python3 (3.11 or newer, with pip) and the docker CLI with an engine.
# Same as `ipsec-interop images build`; see containers/README.md.
#
#   containers/build.sh [NAME...] [--base IMAGE] [--pull] [-v]
#   containers/build.sh list                  the images and whether they are current
#
# If debian:bookworm-slim cannot be pulled (no registry), the base image is created locally
# with debootstrap (root; about 40 s). An unchanged second run takes a few seconds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
py=${PYTHON:-python3}
"$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || {
  echo "build.sh: needs python3 3.11 or newer (set PYTHON=...)" >&2
  exit 3
}
cmd=build
case "${1:-}" in
  list | hash) cmd=$1; shift ;;
  build) shift ;;
esac
export IPSEC_INTEROP_REPO=$root
cd "$root"
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" -m harness.images "$cmd" "$@"
