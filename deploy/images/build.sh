#!/bin/sh
# Builds one image of deploy/images/ with buildah on the local Debian base (local-base.sh), as
# `make image-cpu` / `make image-gateway` do; where Docker Hub and PyTorch's index are reachable,
# `docker build -f deploy/images/<name>.Dockerfile .` builds the same Dockerfile on its public base.
#   deploy/images/build.sh cpu|gateway|ascend-python
# cpu takes torch's CPU wheel from $TORCH_WHEELS_DIR (default /opt/wheels) when that holds one, mounted
# read-only into the build; else from PyTorch's CPU index. ascend-python is the Ascend Dockerfile on the
# Debian base instead of CANN's: its Python layer and entrypoint, not the NPU runtime.
# Appends "name<TAB>seconds<TAB>bytes" to $IMAGE_WORK_DIR/builds.tsv.
set -eu

name="${1:?usage: build.sh cpu|gateway|ascend-python}"
BASE_IMAGE="${BASE_IMAGE:-localhost/qwen3vl-base:bookworm-py3.11}"
WORK_DIR="${IMAGE_WORK_DIR:-/var/tmp/qwen3vl-images}"
TORCH_WHEELS_DIR="${TORCH_WHEELS_DIR:-/opt/wheels}"
VERSION=0.1.0
here="$(dirname "$0")"

"$here/host-tools.sh"
BASE_IMAGE="$BASE_IMAGE" IMAGE_WORK_DIR="$WORK_DIR" "$here/local-base.sh"

# pip in the build trusts the host's CA bundle (a site behind a TLS-inspecting proxy, like this one): the
# bundle and a pip.conf naming it are mounted into the build's RUN steps only, never into a layer.
mkdir -p "$WORK_DIR"
printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' > "$WORK_DIR/pip.conf"
site="-v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro -v $WORK_DIR/pip.conf:/etc/pip.conf:ro"

torch_wheels() {
    if ls "$TORCH_WHEELS_DIR"/torch-*+cpu-*.whl > /dev/null 2>&1; then
        echo "-v $TORCH_WHEELS_DIR:/wheels:ro --build-arg TORCH_WHEELS=/wheels"
    fi
}
# Size budget in MB (uncompressed, as podman reports it), docs/container-images.md "Size budget": the
# measured size plus ~5%; a build over it fails, so that a new dependency's weight is a decision.
case "$name" in
    cpu) file=cpu; tag="localhost/qwen3-vl-triton:$VERSION-cpu"; budget=1650
         args="$site --build-arg PYTHON_IMAGE=$BASE_IMAGE $(torch_wheels)" ;;
    gateway) file=gateway; tag="localhost/qwen3-vl-gateway:$VERSION"; budget=440
         args="$site --build-arg PYTHON_IMAGE=$BASE_IMAGE" ;;
    ascend-python) file=ascend; tag="localhost/qwen3-vl-triton:$VERSION-ascend-python"; budget=1810
         args="$site --build-arg CANN_IMAGE=$BASE_IMAGE $(torch_wheels)" ;;
    *) echo "build.sh: unknown image $name (cpu, gateway, ascend-python)" >&2; exit 2 ;;
esac

start=$(date +%s)
# chroot isolation: this sandbox refuses the namespaces and rlimits of the default runtime.
# shellcheck disable=SC2086  # $args is a list of options
buildah bud --isolation chroot --layers -f "deploy/images/$file.Dockerfile" $args -t "$tag" .
seconds=$(( $(date +%s) - start ))
bytes=$(podman image inspect --format "{{.Size}}" "$tag")
printf '%s\t%s\t%s\n' "$name" "$seconds" "$bytes" >> "$WORK_DIR/builds.tsv"
echo "build.sh: $tag in ${seconds}s, $bytes bytes"
if [ "$bytes" -gt $((budget * 1000000)) ]; then
    echo "build.sh: $tag is over its size budget of $budget MB (docs/container-images.md)" >&2
    exit 1
fi
