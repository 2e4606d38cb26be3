# syntax=docker/dockerfile:1
# The OpenAI-compatible gateway (python -m gateway, port 9000): FastAPI in front of Triton's gRPC port. No
# torch, no Triton: it runs as a sidecar in the Triton pod or as its own Deployment.
#   docker build -f deploy/images/gateway.Dockerfile -t qwen3-vl-gateway:0.1.0 .
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements.txt ./
COPY deploy/images/gateway-packages.txt deploy/images/
# pip constraints cannot carry extras (tritonclient[http,grpc]): the same pins without them. pip itself is
# removed once done: nothing is installed at run time.
RUN sed 's/\[[^]]*\]//' requirements.txt > constraints.txt \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install -c constraints.txt -r deploy/images/gateway-packages.txt \
 && /opt/venv/bin/python -m pip uninstall --yes --quiet pip

FROM ${PYTHON_IMAGE}
# uid 1000 may already exist in the base (NGC has triton-server, CANN images HwHiAiUser); reuse it then.
RUN getent passwd 1000 > /dev/null || useradd --uid 1000 --user-group --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /opt/venv /opt/venv
COPY gateway /opt/qwen3vl/gateway
# The gateway calls Triton through the client library's wire contract (numpy only: no client extras).
COPY client/qwen3vl_client /opt/qwen3vl/qwen3vl_client
COPY backend /opt/qwen3vl/backend
ENV PATH=/opt/venv/bin:$PATH HOME=/tmp GATEWAY_HOST=0.0.0.0 GATEWAY_PORT=9000
WORKDIR /opt/qwen3vl
USER 1000:1000
EXPOSE 9000
ENTRYPOINT ["python", "-m", "gateway"]
