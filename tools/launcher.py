"""``python -m tools.launcher``: serve the model repository with tritonserver (``make serve``).

``serve`` checks the configuration first (tools.preflight), then runs tritonserver (tools.triton_server,
the wheel's by default: tools.triton_install) under a supervisor that restarts it and reloads models whose
stub died (tools.supervisor, tools.watchdog), with the OpenAI/vLLM gateway beside it (tools.gateway_process)
unless ``--no-gateway``. ``serve --tritonserver PATH`` supervises a server installed some other way instead
(NGC's ``/opt/tritonserver`` in the CUDA image): it runs as installed, and the wheel is neither needed nor
read.

CLI::

    python -m tools.launcher serve [--model-repository DIR] [--host ADDR] [--http-port N] ... [-- EXTRA_ARGS]
    python -m tools.launcher serve --tritonserver PATH [--backend-directory DIR] [--cache-directory DIR] ...
    python -m tools.launcher prepare
    python -m tools.launcher perf-env
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tools.gateway_process import GatewayProcess
from tools.ports import DEFAULT_GRPC_PORT, DEFAULT_HOST, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, connect_host
from tools.preflight import PreflightError, check_ports, run_preflight
from tools.repository import (
    CPU_MODEL_INSTANCES,
    MODEL_INSTANCES_ENV,
    parse_model_instances,
    serving_repository,
)
from tools.supervisor import Supervisor
from tools.triton_command import CPU_HOST_ERROR_LINES, HTTP_HOST, has_nvidia_gpu
from tools.triton_install import (
    InstalledServer,
    default_runtime_dir,
    find_triton,
    perf_analyzer_env,
    prepare_runtime_dir,
    venv_python,
    venv_python_version,
)
from tools.triton_server import TritonServer
from tools.watchdog import MAX_RELOADS_PER_WINDOW

logger = logging.getLogger("launcher")

# `make serve` gives in-flight requests of real checkpoints more time; with the stop margin
# (tools.triton_server.STOP_MARGIN_SECS) it ends within the 30 s a Kubernetes pod gets by default between
# SIGTERM and SIGKILL.
SERVE_EXIT_TIMEOUT_SECS = 20
# Loading real 8B checkpoints (and compiling them) can take many minutes.
SERVE_STARTUP_TIMEOUT_SECS = 3600.0


def _env_port(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tools.launcher",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--runtime-dir", type=Path, default=None, help="default: <repo>/.triton")
    parser.add_argument("--venv", type=Path, default=None, help="default: this Python's prefix")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve", help="run tritonserver in the foreground (arguments after -- go to tritonserver)"
    )
    serve.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    serve.add_argument("--http-port", type=int, default=_env_port("TRITON_HTTP_PORT", DEFAULT_HTTP_PORT))
    serve.add_argument("--grpc-port", type=int, default=_env_port("TRITON_GRPC_PORT", DEFAULT_GRPC_PORT))
    serve.add_argument(
        "--metrics-port", type=int, default=_env_port("TRITON_METRICS_PORT", DEFAULT_METRICS_PORT)
    )
    serve.add_argument(
        "--host",
        default=os.environ.get("TRITON_HOST") or DEFAULT_HOST,
        help=f"address gRPC and metrics bind to (TRITON_HOST; default {DEFAULT_HOST}, 0.0.0.0 = all)",
    )
    serve.add_argument(
        "--http-host",
        default=os.environ.get("TRITON_HTTP_HOST") or HTTP_HOST,
        help=f"address Triton's HTTP binds to (TRITON_HTTP_HOST; default {HTTP_HOST}: clients use the "
        "gateway's KServe REST front; tritonserver 2.51's own HTTP parser must not face them)",
    )
    serve.add_argument(
        "--exit-timeout-secs",
        type=int,
        default=SERVE_EXIT_TIMEOUT_SECS,
        help="after SIGTERM, how long in-flight requests may finish before the server is killed",
    )
    serve.add_argument("--startup-timeout", type=float, default=SERVE_STARTUP_TIMEOUT_SECS)
    serve.add_argument("--log-verbose", type=int, default=0)
    serve.add_argument(
        "--model-instances",
        default=os.environ.get(MODEL_INSTANCES_ENV, ""),
        help=f"instances of each model step ({MODEL_INSTANCES_ENV}; default auto: {CPU_MODEL_INSTANCES} on a "
        "CPU-only host with the cores and memory for them, else the repository's count, one per device)",
    )
    serve.add_argument("--no-watchdog", action="store_true", help="do not reload models whose stub died")
    serve.add_argument(
        "--max-stub-reloads",
        type=int,
        default=MAX_RELOADS_PER_WINDOW,
        help="reloads of one model whose stub died within 5 min; past them tritonserver is restarted "
        f"(default {MAX_RELOADS_PER_WINDOW})",
    )
    serve.add_argument(
        "--liveness-timeout",
        type=float,
        default=None,
        help="restart tritonserver when /v2/health/live has not answered for this many seconds (default 60)",
    )
    serve.add_argument(
        "--no-gateway",
        action="store_true",
        help="do not start the OpenAI/vLLM gateway (GATEWAY_PORT, default 9000) beside tritonserver",
    )
    serve.add_argument(
        "--tritonserver",
        type=Path,
        default=None,
        help="run this installed tritonserver (NGC's /opt/tritonserver/bin/tritonserver), not the wheel's",
    )
    serve.add_argument(
        "--backend-directory", type=Path, default=None, help="with --tritonserver: its backends directory"
    )
    serve.add_argument(
        "--cache-directory", type=Path, default=None, help="with --tritonserver: its caches directory"
    )
    commands.add_parser("prepare", help="build the runtime directory and print its paths")
    commands.add_parser("perf-env", help="print shell exports that let perf_analyzer run")
    return parser


def _split_passthrough(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    argv = list(argv)
    if "--" in argv:
        cut = argv.index("--")
        return argv[:cut], argv[cut + 1 :]
    return argv, []


def main(argv: Sequence[str] | None = None) -> int:
    own_args, passthrough = _split_passthrough(sys.argv[1:] if argv is None else argv)
    args = _build_parser().parse_args(own_args)
    venv = args.venv or Path(sys.prefix)
    if args.command == "serve" and args.tritonserver is not None:
        if not os.access(args.tritonserver, os.X_OK) or not args.tritonserver.is_file():
            print(f"launcher: error: --tritonserver {args.tritonserver}: no such executable", file=sys.stderr)
            return 2
        return serve(args, venv, passthrough)
    if args.command == "serve" and (args.backend_directory or args.cache_directory):
        print(
            "launcher: error: --backend-directory and --cache-directory go with --tritonserver",
            file=sys.stderr,
        )
        return 2
    install = find_triton(venv_python_version(venv))
    runtime = prepare_runtime_dir(args.runtime_dir or default_runtime_dir(), install)
    if args.command == "prepare":
        print(f"server_binary={install.server_binary}")
        print(f"backend_dir={runtime.backend_dir}")
        print(f"cache_dir={runtime.cache_dir}")
        print(f"lib_dir={runtime.lib_dir}")
        return 0
    if args.command == "perf-env":
        env = perf_analyzer_env(runtime, install)
        print(f"export LD_LIBRARY_PATH={shlex.quote(env['LD_LIBRARY_PATH'])}")
        return 0
    return serve(args, venv, passthrough)


def _load_model_args(passthrough: Sequence[str]) -> list[str]:
    """Model names given to tritonserver with ``--load-model=NAME`` or ``--load-model NAME``."""
    names = []
    for index, arg in enumerate(passthrough):
        if arg.startswith("--load-model="):
            names.append(arg.split("=", 1)[1])
        elif arg == "--load-model" and index + 1 < len(passthrough):
            names.append(passthrough[index + 1])
    return names


def serve(args: argparse.Namespace, venv: Path, passthrough: Sequence[str]) -> int:
    """Preflight checks, then tritonserver under the supervisor until SIGTERM / Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s launcher: %(message)s", stream=sys.stderr)
    ports = {
        "HTTP port (TRITON_HTTP_PORT)": args.http_port,
        "gRPC port (TRITON_GRPC_PORT)": args.grpc_port,
        "metrics port (TRITON_METRICS_PORT)": args.metrics_port,
    }
    try:
        gateway = None if args.no_gateway else gateway_process(args.host, args.grpc_port)
        gateway_ports = {} if gateway is None else {gateway_port_label(): gateway.port}
        if gateway is not None and gateway.host == args.host:
            ports.update(gateway_ports)
        run_preflight(
            args.model_repository, args.host, ports, venv_python(venv), _load_model_args(passthrough)
        )
        if gateway is not None and gateway.host != args.host:
            check_ports(gateway.host, gateway_ports)
        requested = parse_model_instances(args.model_instances)
    except (PreflightError, ValueError) as error:
        print(f"launcher: error: {error}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="qwen3vl-repository-") as scratch:
        repository, plan = serving_repository(
            args.model_repository, requested, venv_python(venv), _load_model_args(passthrough), Path(scratch)
        )
        if plan.count is None:
            logger.info("model steps: instances as configured (%s)", plan.reason)
        else:
            logger.info(
                "model steps: %d instance(s) each (%s; %s=N chooses)%s",
                plan.count,
                plan.reason,
                MODEL_INSTANCES_ENV,
                ""
                if repository == args.model_repository
                else f", serving a copy of {args.model_repository} at {repository}",
            )
        return _serve(args, venv, passthrough, repository, gateway)


def _serve(
    args: argparse.Namespace,
    venv: Path,
    passthrough: Sequence[str],
    repository: Path,
    gateway: GatewayProcess | None,
) -> int:
    server = TritonServer(
        repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        runtime_dir=args.runtime_dir,
        venv=venv,
        log_path="-",
        extra_args=passthrough,
        startup_timeout=args.startup_timeout,
        log_verbose=args.log_verbose,
        host=args.host,
        http_host=args.http_host,
        exit_timeout=args.exit_timeout_secs,
        installed=installed_server(args),
        # Nothing outlives the launcher, even SIGKILLed: a leftover server would hold the ports.
        dies_with_parent=True,
    )
    if gateway is not None:
        gateway.start()  # not waited for: its /health follows Triton's readiness; the supervisor watches it
    if not has_nvidia_gpu():
        logger.info(CPU_HOST_ERROR_LINES)
    try:
        return Supervisor(
            server,
            watch_stubs=not args.no_watchdog,
            liveness_timeout=args.liveness_timeout,
            max_stub_reloads=args.max_stub_reloads,
            gateway=gateway,
        ).run()
    finally:
        if gateway is not None:
            gateway.stop()


def installed_server(args: argparse.Namespace) -> InstalledServer | None:
    if args.tritonserver is None:
        return None
    return InstalledServer(args.tritonserver.resolve(), args.backend_directory, args.cache_directory)


def gateway_port_label() -> str:
    from gateway.settings import ENVIRONMENT as GATEWAY_ENVIRONMENT  # see gateway_process

    return f"gateway port ({GATEWAY_ENVIRONMENT['port']})"


def gateway_process(host: str, grpc_port: int) -> GatewayProcess:
    """``python -m gateway`` beside tritonserver, with this environment's gateway settings, in the
    launcher's process group so that Ctrl-C reaches both; not started. A bad address setting is a
    ``PreflightError``."""
    # Imported here: the server images (CPU, Ascend, CUDA) carry backend/, tools/ and client/ but no
    # gateway/ (the gateway has an image of its own) and run the launcher with --no-gateway.
    from gateway.settings import ENVIRONMENT as GATEWAY_ENVIRONMENT
    from gateway.settings import settings_from_env as gateway_settings

    address = {
        variable: os.environ[variable]
        for variable in (GATEWAY_ENVIRONMENT["host"], GATEWAY_ENVIRONMENT["port"])
        if variable in os.environ
    }
    try:
        settings = gateway_settings(address)
    except ValueError as error:
        raise PreflightError(f"the gateway cannot start: {error}") from None
    return GatewayProcess(
        os.environ.get(GATEWAY_ENVIRONMENT["triton_grpc_url"]) or f"{connect_host(host)}:{grpc_port}",
        {name: value for name, value in os.environ.items() if name.startswith("GATEWAY_")},
        "-",
        port=settings.port,
        host=settings.host,
        wait_for=None,
        own_session=False,
        dies_with_parent=True,
    )


if __name__ == "__main__":
    sys.exit(main())
