#!/bin/sh
# The host packages the local image builds need (Debian's): buildah builds and runs, debootstrap makes the
# base, podman imports it. Installed once with apt-get when one is missing (root); nothing else is touched.
set -eu
missing=""
for tool in buildah debootstrap podman; do
    command -v "$tool" > /dev/null 2>&1 || missing="$missing $tool"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "host-tools: missing$missing; install them with: apt-get install -y buildah debootstrap podman" >&2
    exit 1
fi
echo "host-tools: installing$missing"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -qy buildah debootstrap podman
