#!/usr/bin/env bash
# Make the local base image of the Neuroverse3D container without a Docker registry:
# a minimal Debian bookworm root (debootstrap --variant=minbase) with Python 3.11, the venv
# module and CA certificates, imported into buildah's local storage as
#
#     localhost/neuroverse3d-base:bookworm        (and :<key>, the hash of this script)
#
# Then build the app on it:  buildah bud --build-arg BASE=localhost/neuroverse3d-base:bookworm ...
# (the README's "Containers and clusters" gives the whole command).
#
# Cache: the root filesystem is kept as a tar in $NEUROVERSE3D_BASE_CACHE (default
# /var/cache/neuroverse3d-ci as root, else ${XDG_CACHE_HOME:-~/.cache}/neuroverse3d-ci),
# named after the first 16 hex digits of this script's sha256: an edit of the script makes a
# new root, nothing else does (run with --refresh for the newest Debian updates).
# Needs root, debootstrap and buildah; network only to the Debian mirror ($DEBIAN_MIRROR).
#
# Usage: scripts/make-base-image.sh [--refresh] [--print-key]
set -euo pipefail

SUITE=bookworm
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${DEBIAN_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# what the official python:3.11-slim-bookworm gives the Dockerfile: python (3.11), venv, CAs
PACKAGES=python3,python3-venv,python-is-python3,ca-certificates
NAME=localhost/neuroverse3d-base
KEY=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-16)

refresh=0
for arg in "$@"; do
    case $arg in
        --refresh) refresh=1 ;;
        --print-key) echo "$KEY"; exit 0 ;;
        -h|--help) sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "make-base-image.sh: unknown argument $arg" >&2; exit 64 ;;
    esac
done

if [ "$(id -u)" != 0 ]; then
    echo "make-base-image.sh: needs root (debootstrap, buildah storage)" >&2; exit 77
fi
for tool in debootstrap buildah; do
    command -v "$tool" >/dev/null || { echo "make-base-image.sh: $tool is missing (apt-get install $tool)" >&2; exit 69; }
done

CACHE=${NEUROVERSE3D_BASE_CACHE:-/var/cache/neuroverse3d-ci}
mkdir -p "$CACHE/pip"  # also the image build's pip cache (buildah bud --volume $CACHE/pip:/pip-cache)
TARBALL=$CACHE/base-$KEY.tar

if [ "$refresh" = 0 ] && buildah inspect --type image "$NAME:$KEY" >/dev/null 2>&1; then
    buildah tag "$NAME:$KEY" "$NAME:$SUITE"
    echo "make-base-image.sh: $NAME:$SUITE is up to date (key $KEY)"
    exit 0
fi

if [ "$refresh" = 1 ] || [ ! -s "$TARBALL" ]; then
    root=$(mktemp -d "$CACHE/root.XXXXXX") && chmod 755 "$root"
    trap 'rm -rf "$root" "$TARBALL.tmp"' EXIT
    echo "make-base-image.sh: debootstrap $SUITE ($MIRROR) into $root"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$root" "$MIRROR" >"$root.log" 2>&1 \
        || { tail -n 30 "$root.log" >&2; rm -f "$root.log"; exit 1; }
    rm -f "$root.log"
    # the point release plus its security and stable updates
    cat >"$root/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb $SECURITY_MIRROR $SUITE-security main
EOF
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
        sh -c 'apt-get -qq update && apt-get -qq -y upgrade >/dev/null && apt-get clean'
    # lean: no package lists, docs, man pages, logs (as the official slim images)
    rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/debconf/*-old \
           "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
           "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache "$root/etc/resolv.conf"
    find "$root/usr/lib/python3.11" -name __pycache__ -prune -exec rm -rf {} +
    : >"$root/etc/resolv.conf"
    chmod 1777 "$root/tmp"
    tar --numeric-owner --xattrs -C "$root" -cf "$TARBALL.tmp" .
    mv "$TARBALL.tmp" "$TARBALL"
    rm -rf "$root"
    trap - EXIT
    # older roots of this script are stale now
    find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "base-$KEY.tar" -delete
fi

echo "make-base-image.sh: importing $TARBALL as $NAME:$SUITE"
ctr=$(buildah from scratch)
trap 'buildah rm "$ctr" >/dev/null 2>&1 || true' EXIT
buildah add --quiet "$ctr" "$TARBALL" / >/dev/null
buildah config \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env LANG=C.UTF-8 \
    --cmd python3 \
    --label org.opencontainers.image.title=neuroverse3d-base \
    --label org.opencontainers.image.description="Debian $SUITE minbase with Python 3.11 (debootstrap)" \
    --label org.opencontainers.image.base.name="debian:$SUITE" \
    --label neuroverse3d.base.key="$KEY" \
    "$ctr"
# timestamp 0: the same root gives the same image id, so the image build's layer cache holds
buildah commit --quiet --rm --timestamp 0 "$ctr" "$NAME:$KEY" >/dev/null
trap - EXIT
buildah tag "$NAME:$KEY" "$NAME:$SUITE"
# untag the bases of older versions of this script (their layers go once nothing uses them)
for old in $(buildah images --format '{{.Name}}:{{.Tag}}' | grep "^$NAME:" | grep -v -e ":$KEY\$" -e ":$SUITE\$" || true); do
    buildah rmi "$old" >/dev/null 2>&1 || true
done
echo "make-base-image.sh: made $NAME:$SUITE (key $KEY)"
