# syntax=docker/dockerfile:1
# CPU image: the tritonserver 2.51 binary from the nvidia-pytriton wheel (as `make serve` runs it), the CPU
# build of torch, the Python backend code and model_repository/. Weights are mounted at /models.
#   docker build -f deploy/images/cpu.Dockerfile -t qwen3-vl-triton:0.1.0-cpu .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# torch's CPU build: from PyTorch's CPU index, or, where that cannot be reached, from a directory of wheels
# mounted into the build (buildah bud -v /opt/wheels:/wheels:ro --build-arg TORCH_WHEELS=/wheels, as
# `make image-cpu` does): pip takes the +cpu wheel there over PyPI's CUDA one (a local version sorts higher).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_WHEELS=
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.txt pyproject.toml ./
COPY deploy/images/serve-packages.txt deploy/images/
# pip constraints cannot carry extras (tritonclient[http,grpc]): the same pins without them.
RUN sed 's/\[[^]]*\]//' requirements.txt > constraints.txt
RUN python -m venv /opt/venv
# torch: requirements.txt's version, CPU build; everything else pinned by requirements.txt as a constraint.
RUN TORCH="$(sed -n 's/^torch==//p' requirements.txt)" \
 && if [ -n "${TORCH_WHEELS}" ]; then from="--find-links ${TORCH_WHEELS}"; else from="--index-url ${TORCH_INDEX}"; fi \
 && /opt/venv/bin/pip install ${from} "torch==${TORCH}" \
 && /opt/venv/bin/pip install -c constraints.txt -r deploy/images/serve-packages.txt \
      "$(grep '^nvidia-pytriton==' requirements.txt)"
COPY backend backend
COPY tools tools
COPY client client
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/python -m tools.launcher --runtime-dir /opt/qwen3vl/triton-runtime prepare
# Not needed to serve: the torch wheel's C++ unit-test binaries (torch/test, torch/bin's tests, ~120 MB) and
# pip (nothing is installed at run time); docs/container-images.md has the image's size budget.
RUN site="$(/opt/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -rf "${site}/torch/test" "${site}"/torch/bin/*Test "${site}"/torch/bin/test_* \
 && /opt/venv/bin/python -m pip uninstall --yes --quiet pip

FROM ${PYTHON_IMAGE}
# uid 1000 may already exist in the base (NGC has triton-server, CANN images HwHiAiUser); reuse it then.
RUN getent passwd 1000 > /dev/null || useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin triton
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/qwen3vl/triton-runtime /opt/qwen3vl/triton-runtime
COPY model_repository /opt/qwen3vl/model_repository
COPY deploy/__init__.py deploy/serve.py /opt/qwen3vl/deploy/
# The Python backend stub finds its environment through python3 on PATH (it ignores PYTHONPATH).
ENV PATH=/opt/venv/bin:$PATH \
    TRITON_RUNTIME_DIR=/opt/qwen3vl/triton-runtime \
    HOME=/tmp \
    TRITON_HOST=0.0.0.0 \
    HF_HUB_OFFLINE=1 \
    DEVICE=cpu
WORKDIR /opt/qwen3vl
USER 1000:1000
# gRPC and metrics. Triton's HTTP (8000) binds loopback and is not exposed: tritonserver 2.51 (the wheel)
# crashes on a deeply nested JSON body; REST clients use the gateway image's port (KServe v2 routes, 9000).
EXPOSE 8001 8002
ENTRYPOINT ["python", "-m", "deploy.serve"]
