# syntax=docker/dockerfile:1
# CUDA image: NGC Triton 26.11, i.e. tritonserver 2.75, the newest release checked against the project's
# known 2.51 limits (docs/container-images.md): iterative JSON parsing in the HTTP front (common PR #156, first
# in r26.05), the dynamic batcher's starvation fix (2.72 / 26.08) and its use-after-free fix (2.75 / 26.11).
# With a CUDA build of torch, the Python backend code and model_repository/. Weights are mounted at /models.
#   docker build -f deploy/images/cuda.Dockerfile -t qwen3-vl-triton:0.1.0-cuda .
# Not built here: nvcr.io cannot be reached from this project's machines (the CPU and gateway images are).
ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:26.11-py3
# NGC 26.x releases are CUDA 13 (26.10: 13.4): the cu130 wheels run on them (CUDA 13 minor-version
# compatibility; driver R580 or later).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

FROM ${TRITON_IMAGE} AS build
ARG TORCH_INDEX
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.txt pyproject.toml ./
COPY deploy/images/serve-packages.txt deploy/images/
# pip constraints cannot carry extras (tritonclient[http,grpc]): the same pins without them.
RUN sed 's/\[[^]]*\]//' requirements.txt > constraints.txt
# A venv of the image's own python3 (Ubuntu's is externally managed); the stub is built for that Python.
RUN python3 -m venv /opt/venv
RUN TORCH="$(sed -n 's/^torch==//p' requirements.txt)" \
 && /opt/venv/bin/pip install --index-url "${TORCH_INDEX}" "torch==${TORCH}" \
 && /opt/venv/bin/pip install -c constraints.txt -r deploy/images/serve-packages.txt
COPY backend backend
COPY tools tools
COPY client client
RUN /opt/venv/bin/pip install --no-deps .

FROM ${TRITON_IMAGE}
# uid 1000 may already exist in the base (NGC has triton-server, CANN images HwHiAiUser); reuse it then.
RUN getent passwd 1000 > /dev/null || useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin qwen3vl
COPY --from=build /opt/venv /opt/venv
COPY model_repository /opt/qwen3vl/model_repository
COPY deploy/__init__.py deploy/serve.py /opt/qwen3vl/deploy/
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    HF_HUB_OFFLINE=1 \
    DEVICE=cuda
WORKDIR /opt/qwen3vl
USER 1000:1000
# gRPC and metrics. Triton's HTTP (8000) binds loopback: NGC 26.11's 2.75 has the upstream parser fixes,
# but every image keeps one REST door, the gateway image's port (KServe v2 + OpenAI routes, 9000).
EXPOSE 8001 8002
ENTRYPOINT ["python", "-m", "deploy.serve"]
