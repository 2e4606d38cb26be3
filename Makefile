# Qwen3-VL-Embedding on Triton. `make serve` and `make test` work from a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
EMBEDDING_TINY := models/qwen3-vl-embedding-tiny
RERANKER_TINY := models/qwen3-vl-reranker-tiny

export TRITON_HTTP_PORT ?= 8000
export TRITON_GRPC_PORT ?= 8001
export TRITON_METRICS_PORT ?= 8002

.PHONY: setup venv models serve test unit integration lint typecheck format clean manifests docs help

setup: venv models ## the venv and the tiny checkpoints (what serve and test run first)

venv: $(VENV)/.installed ## create .venv and install the pinned requirements (~5 min the first time, quiet)

$(VENV)/.installed: requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m tools.launcher prepare > /dev/null
	touch $@

models: venv ## build the tiny embedding and reranker checkpoints into models/
	$(PY) -m tools.checkpoint --out $(EMBEDDING_TINY) --kind embedding
	$(PY) -m tools.checkpoint --out $(RERANKER_TINY) --kind reranker

# Serves model_repository/ in the foreground; MODEL_PATH=/path/to/Qwen3-VL-Embedding-8B and
# RERANKER_MODEL_PATH=/path/to/Qwen3-VL-Reranker-8B serve real weights.
# Binds 127.0.0.1 (TRITON_HOST=0.0.0.0 serves the network); misconfiguration fails before the server starts.
# RESPONSE_CACHE_BYTES=1073741824 turns on Triton's local response cache (off by default; both ensembles use it).
comma := ,
serve: setup ## tritonserver on :8000/:8001/:8002 and the gateway on :9000, in the foreground
	$(PY) -m tools.launcher serve --model-repository model_repository \
		$(if $(RESPONSE_CACHE_BYTES),-- --cache-config=local$(comma)size=$(RESPONSE_CACHE_BYTES))

test: setup ## the whole test suite (unit, then integration against a real tritonserver)
	$(PY) -m pytest -q

unit: setup ## unit tests only (no server)
	$(PY) -m pytest -q tests/unit

integration: setup ## integration tests only
	$(PY) -m pytest -q tests/integration

lint: venv typecheck ## ruff check, ruff format --check and the type checker
	$(VENV)/bin/ruff check backend client deploy gateway perf tests tools model_repository
	$(VENV)/bin/ruff format --check backend client deploy gateway perf tests tools model_repository

TYPED := backend gateway client/qwen3vl_client tools perf deploy
typecheck: venv ## mypy over backend, gateway, client, tools, perf, deploy (config: pyproject [tool.mypy])
	$(VENV)/bin/mypy $(TYPED)

format: venv ## ruff format and ruff check --fix
	$(VENV)/bin/ruff format backend client deploy gateway perf tests tools model_repository
	$(VENV)/bin/ruff check --fix backend client deploy gateway perf tests tools model_repository

# Renders the Helm chart for every variant (2B/8B x CUDA/Ascend/CPU, gateway on/off) into build/manifests/<variant>/
# with deploy/render.py: no helm binary, no cluster. The tests validate them against the Kubernetes schemas.
manifests: venv ## render the Helm chart for every variant into build/manifests/
	$(PY) -m deploy.render --out build/manifests

# The documentation site (mkdocs.yml): the generated configuration tables must match the settings classes, and
# the strict build fails on a broken link or anchor or a page missing from the nav.
docs: venv ## build the docs site into build/site/ (strict: broken links or anchors fail)
	$(PY) -m tools.settings_tables --check
	$(VENV)/bin/mkdocs build --strict --quiet

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([a-zA-Z_-]+):.*## /\1\t/' | \
		awk -F'\t' '{ printf "  %-16s %s\n", $$1, $$2 }'

clean: ## remove .venv, .triton, models/ and the pytest cache
	rm -rf $(VENV) .triton models .pytest_cache

# perf_analyzer sweeps and side-by-side comparisons (perf/README.md); results in perf/results/<host>/<date>/.
# `make perf WORKLOAD=text_200,image_448 CONCURRENCY=1,4,16 PERF_ARGS="--models tiny,bench"`
WORKLOAD ?=
CONCURRENCY ?=
PERF_ARGS ?=
SIZE ?= tiny
.PHONY: perf perf-accel

perf: setup ## perf_analyzer sweeps of the served ensembles (WORKLOAD=, CONCURRENCY=, PERF_ARGS=)
	$(PY) -m perf.run $(if $(WORKLOAD),--workloads $(WORKLOAD)) $(if $(CONCURRENCY),--concurrency $(CONCURRENCY)) $(PERF_ARGS)

# The vLLM-Ascend benchmark on a device: `make perf-accel SIZE=8b DEVICE=cuda` (SIZE=tiny DEVICE=cpu runs anywhere).
perf-accel: setup ## the vLLM-Ascend benchmark on a device (SIZE=8b DEVICE=cuda)
	$(PY) -m perf.accel --size $(SIZE) --device $(or $(DEVICE),auto) $(PERF_ARGS)

# Overload and recovery of `make serve`, outside `make test` (results in perf/results/<host>/<date>/, README
# "Operations"): 4x capacity against the bounded queues; SIGKILL of each stub kind and of tritonserver under load.
.PHONY: overload recovery
overload: setup ## 4x capacity against the bounded queues
	$(PY) -m perf.drills.overload $(PERF_ARGS)

recovery: setup ## SIGKILL of each stub kind and of tritonserver under load
	$(PY) -m perf.drills.recovery

# Reliability of `make serve` (issue #10), outside `make test`, ~20 min: 5,000 seeded malformed requests with good
# ones interleaved, a 20,000-request soak (stub RSS, throughput), 4x overload, SIGKILL of each stub kind and of
# tritonserver under load, SIGTERM under load; then issue 19's phases: the model stub's RSS over a 20,000-request
# mixed soak (flat within 5 % from request 1k, or a ceiling), refusal latency (4x capacity, short and long texts,
# gRPC and the gateway: refusal.{json,md}), 60 MB hostile bodies at the gateway, SIGKILLs under load with the
# gateway (reload). Results in perf/results/<host>/<date>/reliability.{json,md}. PERF_ARGS="--rss-soak 5000"
# shortens the RSS phase; PERF_ARGS="--only refusal" runs the refusal phase alone (~10 min).
.PHONY: reliability
reliability: setup ## ~45 min: malformed requests, soak, stub RSS, overload, refusal latency, kills, SIGTERM, gateway bodies, reload
	$(PY) -m perf.drills.reliability $(PERF_ARGS)

# The seed's `vllm bench serve` (embeddings and rerank) against the gateway, offline, with vLLM 0.33 in a venv of
# its own (~2.2 GB, not the project's, not `make test`): `make perf-vllm` (VLLM_BENCH_ARGS="--only rerank").
VLLM_BENCH_VENV ?= .venv-vllm-bench
VLLM_BENCH_ARGS ?=
.PHONY: perf-vllm vllm-bench-venv perf-gateway

vllm-bench-venv: $(VLLM_BENCH_VENV)/.installed ## vLLM 0.33's venv for perf-vllm (~2.2 GB)

$(VLLM_BENCH_VENV)/.installed: perf/requirements-vllm-bench.txt
	test -x $(VLLM_BENCH_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_BENCH_VENV)
	$(VLLM_BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -r perf/requirements-vllm-bench.txt
	touch $@

perf-vllm: setup vllm-bench-venv ## `vllm bench serve` against the gateway
	$(PY) -m perf.vllm_bench --vllm $(VLLM_BENCH_VENV)/bin/vllm $(VLLM_BENCH_ARGS)

# A/B of a commit against the working tree (same points, alternately, same ports): `make perf-ab REF=ed6213f`.
# Peer: sentence-transformers in .venv-peer/ (transformers 5, never the project's venv) against the server.
.PHONY: perf-ab perf-peer
perf-ab: setup ## throughput ratio working tree / REF with its spread (REF=<commit>, PERF_ARGS=)
	$(if $(REF),,$(error REF=<commit> is required, e.g. make perf-ab REF=ed6213f))
	$(PY) -m perf.ab $(REF) $(PERF_ARGS)

perf-peer: setup ## sentence-transformers vs the server, same items, interleaved (needs .venv-peer, perf/README.md)
	$(PY) -m perf.peer $(PERF_ARGS)

# Gateway overhead: text_200 through /v1/embeddings vs perf_analyzer gRPC on the ensemble, same server, same run.
perf-gateway: setup ## gateway overhead against gRPC on the ensemble
	$(PY) -m perf.gateway_bench $(PERF_ARGS)

# Container images built and smoke-tested here with buildah (minutes each, root, not `make test`): a local
# Debian base stands in for Docker Hub's (deploy/images/local-base.sh); the first run installs the host's
# buildah, debootstrap and podman with apt-get. See docs/container-images.md.
.PHONY: image-base image-cpu image-gateway image-ascend-python image-smoke

image-base: ## the local Debian base (debootstrap; installs buildah, debootstrap, podman when missing)
	deploy/images/host-tools.sh && deploy/images/local-base.sh

image-cpu: ## build the CPU server image with buildah
	deploy/images/build.sh cpu

image-gateway: ## build the gateway image with buildah
	deploy/images/build.sh gateway

image-ascend-python: ## the Ascend image's Python layer on the Debian base (no CANN)
	deploy/images/build.sh ascend-python

image-smoke: setup ## start the built images as the chart does: readiness, embed, rerank, /v1/embeddings, clean stop
	$(PY) -m deploy.images.smoke
