#!/usr/bin/env bash
# The images' Python base, built from Debian packages: for hosts that cannot pull
# python:3.11-slim-bookworm (no image registry reachable, or none allowed).
#
#   docker/base.sh [--rebuild] [TAG]     # as root; prints TAG (default pspnet-base/python:3.11-bookworm)
#   docker build --build-arg PYTHON_IMAGE=pspnet-base/python:3.11-bookworm \
#       -f docker/Dockerfile.cpu -t pspnet-serving:cpu .
#
# Both Dockerfiles and docker/compose.yaml take their base by that build argument.
# Steps:
#   1. debootstrap --variant=minbase of Debian $SUITE (bookworm) from the apt mirror this host
#      already uses (the first `deb` source of that suite in /etc/apt/sources.list and
#      /etc/apt/sources.list.d/; $DEBIAN_MIRROR overrides), with apt's python3 (3.11 on
#      bookworm), python3-venv and ca-certificates; then upgraded from $SUITE-updates and
#      $SUITE-security, whose sources stay in the image for the Dockerfiles' own apt-get;
#   2. TLS to the Python package index ($PIP_INDEX_URL, else PyPI) is tried with the image's own CA
#      bundle; where it fails (a TLS-inspecting proxy) and this host's bundle
#      ($SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt) makes it pass, that bundle is
#      added to the image's (update-ca-certificates), else the script stops;
#   3. documentation, apt lists and caches removed (and kept out of later installs, as the slim
#      images do), then `docker import` with the environment of python:*-slim.
# An image TAG made from the same inputs (this script, suite, mirrors) is reused unless --rebuild.
# Needs root, debootstrap, and a docker client ($DOCKER, default docker) with an engine.
set -euo pipefail

SUITE=${SUITE:-bookworm}
DOCKER=${DOCKER:-docker}
INDEX_URL=${PIP_INDEX_URL:-https://pypi.org/simple/}
HOST_CA=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}
rebuild=0
tag=pspnet-base/python:3.11-$SUITE
for arg in "$@"; do
    case "$arg" in
        --rebuild) rebuild=1 ;;
        -h | --help) sed -n '2,/^set -euo/{/^set -euo/d; s/^# \{0,1\}//; p}' "$0"; exit 0 ;;
        -*) echo "base.sh: unknown option $arg" >&2; exit 2 ;;
        *) tag=$arg ;;
    esac
done
log() { echo "base.sh: $*" >&2; }

[ "$(id -u)" -eq 0 ] || { log "debootstrap needs root (run it as root, or with sudo)"; exit 1; }
command -v debootstrap >/dev/null || { log "needs debootstrap (apt-get install debootstrap)"; exit 1; }

# apt_uri SUITE: the URI of this host's first `deb` source for SUITE (one-line and deb822 formats)
apt_uri() {
    local files=()
    [ -f /etc/apt/sources.list ] && files+=(/etc/apt/sources.list)
    for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] && files+=("$f")
    done
    [ "${#files[@]}" -gt 0 ] || return 0
    awk -v want="$1" '
        function flush() {  # end of a deb822 paragraph
            if (types ~ /(^| )deb( |$)/ && (" " suites " ") ~ (" " want " ") && uri != "" && !found) {
                print uri; found = 1
            }
            types = ""; suites = ""; uri = ""
        }
        FNR == 1 { flush() }
        /^[ \t]*$/ { flush(); next }
        /^[ \t]*#/ { next }
        $1 == "deb" {  # one-line format: deb [options] URI SUITE COMPONENTS
            i = 2
            if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
            if ($(i + 1) == want && !found) { print $i; found = 1 }
            next
        }
        tolower($1) == "types:" { $1 = ""; types = $0 }
        tolower($1) == "uris:" { uri = $2 }
        tolower($1) == "suites:" { $1 = ""; suites = $0 }
        END { flush() }
    ' "${files[@]}" | head -n 1
}

mirror=${DEBIAN_MIRROR:-$(apt_uri "$SUITE")}
mirror=${mirror:-http://deb.debian.org/debian}
security=${DEBIAN_SECURITY_MIRROR:-$(apt_uri "$SUITE-security")}
security=${security:-http://deb.debian.org/debian-security}
key=$( { cat "$0"; echo "$SUITE $mirror $security"; } | sha256sum | cut -c1-16)

if [ "$rebuild" -eq 0 ] &&
   [ "$("$DOCKER" image inspect -f '{{index .Config.Labels "org.pspnet.base.inputs"}}' "$tag" 2>/dev/null)" = "$key" ]; then
    log "$tag is current (inputs $key); --rebuild to make it again"
    echo "$tag"
    exit 0
fi

work=$(mktemp -d "${TMPDIR:-/var/tmp}/pspnet-base.XXXXXX")
root="$work/rootfs"
proc_mounted=0
cleanup() {
    if [ "$proc_mounted" -eq 1 ]; then umount "$root/proc"; fi
    rm -rf --one-file-system "$work"
}
trap cleanup EXIT
in_root() { chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive "$@"; }

t0=$SECONDS
log "debootstrap $SUITE from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$SUITE" "$root" "$mirror" >"$work/debootstrap.log" 2>&1 ||
    { tail -n 30 "$work/debootstrap.log" >&2; log "debootstrap failed"; exit 1; }

cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror $SUITE main
deb $mirror $SUITE-updates main
deb $security $SUITE-security main
EOF
cp /etc/resolv.conf "$root/etc/resolv.conf"  # for the steps below only
mount -t proc proc "$root/proc"
proc_mounted=1
log "upgrading from $SUITE-updates and $SUITE-security"
{ in_root apt-get update -qq && in_root apt-get -y -qq -o Dpkg::Options::=--force-confold dist-upgrade; } \
    >"$work/upgrade.log" 2>&1 || { tail -n 30 "$work/upgrade.log" >&2; log "upgrade failed"; exit 1; }

tls_ok() {
    in_root python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=20).close()' \
        "$INDEX_URL" 2>"$work/tls.err"
}
if tls_ok; then
    log "TLS to $INDEX_URL verifies with Debian's CA bundle"
else
    log "TLS to $INDEX_URL fails with Debian's CA bundle ($(tail -n 1 "$work/tls.err")); adding $HOST_CA"
    [ -s "$HOST_CA" ] || { log "no CA bundle at $HOST_CA (set SSL_CERT_FILE)"; exit 1; }
    cp "$HOST_CA" "$root/usr/local/share/ca-certificates/host-ca-bundle.crt"
    in_root update-ca-certificates >"$work/ca.log" 2>&1 || { cat "$work/ca.log" >&2; exit 1; }
    tls_ok || { cat "$work/tls.err" >&2; log "TLS to $INDEX_URL still fails"; exit 1; }
fi
python=$(in_root python3 -c 'import platform; print(platform.python_version())')
umount "$root/proc"
# shellcheck disable=SC2034  # read by cleanup, the EXIT trap
proc_mounted=0

# slim: what python:*-slim leaves out, now and for every later apt-get install
cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/{man,info,locale,lintian}/* "$root"/var/lib/apt/lists/* \
    "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/log/*.log \
    "$root"/var/cache/debconf/*-old
: >"$root/etc/resolv.conf"

log "importing $tag (Python $python)"
tar -C "$root" --numeric-owner -c . | "$DOCKER" import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change "LABEL org.pspnet.base.inputs=$key org.pspnet.base.python=$python org.pspnet.base.suite=$SUITE" \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
log "built $tag in $((SECONDS - t0)) s: $("$DOCKER" image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1 / 1e6}')"
echo "$tag"
