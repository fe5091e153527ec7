#!/usr/bin/env bash
# Creates a Debian base image locally, for machines that cannot pull one from a registry:
# debootstrap (minbase) into a scratch folder, trimmed like the official "-slim" images, then
# `docker import`. About 40 s for bookworm on 2 cores; needs root and debootstrap.
#
#   containers/base/bootstrap.sh TAG [SUITE]      e.g. ipsec-interop/debian:bookworm-slim bookworm
#
# Packages come from the mirror the host's apt uses (first Debian URI in its sources), or
# DEBIAN_MIRROR / DEBIAN_SECURITY_MIRROR when set; the image's own apt sources point there too.
# Honours DOCKER_HOST (the import goes to whichever engine the docker CLI talks to).
set -euo pipefail

tag=${1:?usage: $0 TAG [SUITE]}
suite=${2:-bookworm}

say() { echo "bootstrap: $*" >&2; }

[ "$(id -u)" = 0 ] || { say "needs root (debootstrap)"; exit 3; }
command -v debootstrap >/dev/null || {
  say "debootstrap is missing: apt-get install debootstrap (scripts/docker-engine start does)"
  exit 3
}

host_mirror() {
  # The first http(s) URI of the host's apt sources whose path ends in /debian.
  local f
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    grep -vE '^[[:space:]]*#' "$f" | grep -hoE "https?://[^ ]+/debian/?( |$)" | head -n 1 | tr -d ' '
  done | head -n 1
}

mirror=${DEBIAN_MIRROR:-$(host_mirror)}
mirror=${mirror:-http://deb.debian.org/debian}
mirror=${mirror%/}
security=${DEBIAN_SECURITY_MIRROR:-${mirror}-security}

# An apt proxy of the host's, if any, serves debootstrap too.
proxy=$(apt-config dump 2>/dev/null | sed -n 's/^Acquire::http::Proxy "\(.*\)";$/\1/p' | head -n 1)
if [ -n "$proxy" ] && [ -z "${http_proxy:-}" ]; then
  export http_proxy=$proxy
fi

root=$(mktemp -d /var/tmp/ipsec-interop-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT

start=$SECONDS
say "debootstrap $suite from $mirror (about 40 s)"
if ! debootstrap --variant=minbase "$suite" "$root" "$mirror" >"$root.log" 2>&1; then
  tail -n 20 "$root.log" >&2
  rm -f "$root.log"
  say "debootstrap failed"
  exit 3
fi
rm -f "$root.log"

# The image's apt sources: the suite, its updates and its security updates (as the official
# images have them), from the same mirror.
rm -f "$root/etc/apt/sources.list"
cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite $suite-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: $security
Suites: $suite-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF

# Slim: no documentation, manuals or translations now or in later installs.
cat >"$root/etc/dpkg/dpkg.cfg.d/ipsec-interop-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
cat >"$root/etc/apt/apt.conf.d/ipsec-interop-slim" <<'EOF'
APT::Install-Recommends "false";
Acquire::Languages "none";
EOF
find "$root/usr/share/doc" -mindepth 2 ! -name copyright -delete 2>/dev/null || true
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/var/lib/apt/lists/* \
  "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + 2>/dev/null || true
: >"$root/etc/machine-id"

created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
tar --numeric-owner -C "$root" -c . | docker import \
  --change 'CMD ["bash"]' \
  --change "LABEL org.ipsec-interop.base=debootstrap org.ipsec-interop.base-suite=$suite org.ipsec-interop.base-mirror=$mirror org.ipsec-interop.base-created=$created" \
  --message "debootstrap --variant=minbase $suite (ipsec-interop containers/base/bootstrap.sh)" \
  - "$tag" >/dev/null
say "created $tag in $((SECONDS - start)) s"
