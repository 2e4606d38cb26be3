"""Container entrypoint of the Triton images: ``python -m deploy.serve [-- TRITONSERVER_ARGS]``.

The image bakes ``model_repository/`` in; a pod differs from ``make serve`` only in how many devices it has,
how many preprocess processes it wants, which pipelines it serves and whether it caches responses. This
module copies the pipelines asked for into a writable directory with those instance counts, then replaces
itself with ``tools.launcher serve``, which supervises the server as under ``make serve`` (preflight checks,
restarts, the stub watchdog, explicit model control, liveness): NGC's ``tritonserver`` where the image has
one (CUDA, given to the launcher with ``--tritonserver``), else the wheel's server (CPU, Ascend).

Environment (the Helm chart sets each one; defaults are ``make serve``'s):
  MODEL_REPOSITORY       repository to serve (default: the baked one)
  PIPELINES              embedding,reranker (default both)
  MODEL_INSTANCES        model-step instances, one per device (instance k uses device k); auto or unset:
                         the launcher's choice (tools.repository: 2 on a CPU-only host with room for them)
  PREPROCESS_INSTANCES   preprocess processes per pipeline
  RESPONSE_CACHE         local,size=BYTES or redis,host=H,port=P (one --cache-config per key)
  REDIS_PASSWORD         appended to a redis cache config
  TRITON_EXIT_TIMEOUT_SECS, TRITON_SHM_DEFAULT_BYTES, TRITON_HTTP_PORT, TRITON_GRPC_PORT, TRITON_METRICS_PORT
  TRITON_HOST            address gRPC and metrics bind (default 0.0.0.0: a pod is reached from outside)
  TRITON_HTTP_HOST       address Triton's HTTP binds (default the launcher's, 127.0.0.1: REST clients use
                         the gateway; set 0.0.0.0 only for a server with the upstream parser fixes)
  SERVE_DIR              where the repository copy goes (default /tmp/qwen3vl)
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tools.repository import MODEL_INSTANCES_ENV, parse_model_instances, set_instance_count

REPO = Path(__file__).resolve().parent.parent
BAKED_REPOSITORY = REPO / "model_repository"
NGC_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
CONTAINER_HOST = "0.0.0.0"

# Pipeline name -> (ensemble, preprocess step, model step): the directories a pipeline needs.
PIPELINE_MODELS = {
    "embedding": ("qwen3_vl_embedding", "qwen3_vl_embedding_preprocess", "qwen3_vl_embedding_model"),
    "reranker": ("qwen3_vl_reranker", "qwen3_vl_reranker_preprocess", "qwen3_vl_reranker_model"),
}


def parse_pipelines(value: str) -> list[str]:
    names = [name.strip() for name in value.split(",") if name.strip()]
    unknown = set(names) - set(PIPELINE_MODELS)
    if not names or unknown:
        raise ValueError(f"PIPELINES={value!r}: choose from {', '.join(PIPELINE_MODELS)}")
    return names


def prepare_repository(
    source: Path,
    dest: Path,
    pipelines: Sequence[str],
    model_instances: int | None = None,
    preprocess_instances: int | None = None,
) -> Path:
    """Copy the pipelines' model directories from source to dest (replacing dest) with the given counts."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for pipeline in pipelines:
        _, preprocess, model_step = PIPELINE_MODELS[pipeline]
        for name in PIPELINE_MODELS[pipeline]:
            shutil.copytree(source / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name, count in ((model_step, model_instances), (preprocess, preprocess_instances)):
            if count is not None:
                config = dest / name / "config.pbtxt"
                config.write_text(set_instance_count(config.read_text(), count))
    return dest


def cache_args(env: Mapping[str, str]) -> list[str]:
    """``--cache-config`` options for RESPONSE_CACHE=name,key=value,...: tritonserver takes one key per
    option (``--cache-config=redis,host=h --cache-config=redis,port=p``; a second key in the same option
    would become part of the first one's value)."""
    value = env.get("RESPONSE_CACHE", "").strip()
    if not value:
        return []
    name, *settings = value.split(",")
    if name == "redis" and env.get("REDIS_PASSWORD"):
        settings.append(f"password={env['REDIS_PASSWORD']}")
    if not settings or any("=" not in setting for setting in settings):
        raise ValueError(f"RESPONSE_CACHE={value!r}: expected NAME,KEY=VALUE[,KEY=VALUE...]")
    return [f"--cache-config={name},{setting}" for setting in settings]


def server_args(env: Mapping[str, str]) -> list[str]:
    """tritonserver options that come from the pod's environment (repository, address, ports and exit
    timeout, which are the launcher's own options, excluded)."""
    args = cache_args(env)
    if env.get("TRITON_SHM_DEFAULT_BYTES"):
        args.append(f"--backend-config=python,shm-default-byte-size={int(env['TRITON_SHM_DEFAULT_BYTES'])}")
    return args


def _optional_int(env: Mapping[str, str], name: str) -> int | None:
    return int(env[name]) if env.get(name) else None


def command(
    env: Mapping[str, str], extra: Sequence[str], repository: Path, ngc_server: Path = NGC_TRITONSERVER
) -> list[str]:
    """The argv that serves ``repository``: tools.launcher supervising NGC's server where the image has
    one (``ngc_server``), else the wheel's."""
    ports = {
        name: env.get(f"TRITON_{name.upper()}_PORT", default)
        for name, default in (("http", "8000"), ("grpc", "8001"), ("metrics", "8002"))
    }
    exit_timeout = env.get("TRITON_EXIT_TIMEOUT_SECS")
    launcher_options, server = [], []
    if ngc_server.exists():
        # NGC's layout (<root>/bin/tritonserver, <root>/backends) is used as it is: no wheel, no runtime dir.
        server = [
            "--tritonserver",
            str(ngc_server),
            "--backend-directory",
            str(ngc_server.parent.parent / "backends"),
        ]
    elif env.get("TRITON_RUNTIME_DIR"):
        launcher_options = ["--runtime-dir", env["TRITON_RUNTIME_DIR"]]
    # The gateway is a container of its own.
    return [
        sys.executable, "-m", "tools.launcher", *launcher_options,
        "serve", *server,
        "--model-repository", str(repository),
        "--host", env.get("TRITON_HOST") or CONTAINER_HOST,
        *(["--http-host", env["TRITON_HTTP_HOST"]] if env.get("TRITON_HTTP_HOST") else []),
        "--http-port", ports["http"],
        "--grpc-port", ports["grpc"],
        "--metrics-port", ports["metrics"],
        "--no-gateway",
        *(["--exit-timeout-secs", str(int(exit_timeout))] if exit_timeout else []),
        "--", *server_args(env), *extra,
    ]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else argv
    env = os.environ
    repository = prepare_repository(
        Path(env.get("MODEL_REPOSITORY") or BAKED_REPOSITORY),
        Path(env.get("SERVE_DIR", "/tmp/qwen3vl")) / "model_repository",
        parse_pipelines(env.get("PIPELINES", "embedding,reranker")),
        parse_model_instances(env.get(MODEL_INSTANCES_ENV)) or None,  # auto: the launcher decides
        _optional_int(env, "PREPROCESS_INSTANCES"),
    )
    argv_out = command(env, extra, repository)
    print("serving:", " ".join(argv_out), flush=True)
    os.execv(argv_out[0], argv_out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
