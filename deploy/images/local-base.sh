#!/bin/sh
# Makes the local stand-in for python:3.11-slim-bookworm where Docker Hub cannot be reached: a Debian
# bookworm root filesystem with Debian's own python3.11 (debootstrap, from Debian's archive only), imported
# into buildah/podman's local storage as $BASE_IMAGE. The CPU and gateway Dockerfiles build on it with
#   --build-arg PYTHON_IMAGE=$BASE_IMAGE
# and stay pinned to their public base for everyone else. Idempotent: an existing image is kept unless
# REBUILD=1. Needs root and the host packages `debootstrap podman` (deploy/images/host-tools.sh).
#   deploy/images/local-base.sh            # -> localhost/qwen3vl-base:bookworm-py3.11
set -eu

BASE_IMAGE="${BASE_IMAGE:-localhost/qwen3vl-base:bookworm-py3.11}"
# Build artefacts live outside the git checkout.
WORK_DIR="${IMAGE_WORK_DIR:-/var/tmp/qwen3vl-images}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
# What python:3.11-slim gives the Dockerfiles: `python` on PATH, venv + ensurepip, the shared libpython
# (the Triton Python backend stub links against libpython3.11.so.1.0), CA certificates for pip.
# Installed with apt inside the new root: debootstrap's own resolver misses virtual packages
# (python3.11-venv needs python3.11-distutils, which python3-distutils provides).
PACKAGES="python3.11 python3.11-venv libpython3.11 python-is-python3 ca-certificates"

if [ "${REBUILD:-0}" != 1 ] && podman image exists "$BASE_IMAGE"; then
    echo "local-base: $BASE_IMAGE already exists (REBUILD=1 to make it again)"
    exit 0
fi

rootfs="$WORK_DIR/base-rootfs"
rm -rf "$rootfs"
mkdir -p "$WORK_DIR"
debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR"

# Security updates, as the public base gets them, and Python; then drop what an image never needs.
cat > "$rootfs/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
chroot "$rootfs" sh -c "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get upgrade -qy \
    && DEBIAN_FRONTEND=noninteractive apt-get install -qy --no-install-recommends $PACKAGES && apt-get clean"
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log \
    "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/*

tar --numeric-owner -C "$rootfs" -c . \
    | podman import --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$BASE_IMAGE"
rm -rf "$rootfs"
echo "local-base: $BASE_IMAGE"
