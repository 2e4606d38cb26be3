"""``python -m gateway [--host H] [--port P] [--triton-grpc-url URL]``: serve the gateway with uvicorn.
Everything else comes from the environment (see gateway/settings.py and the README)."""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence

from gateway.settings import settings_from_env

# Every request of a `vllm bench serve` burst opens its own connection at t=0.
LISTEN_BACKLOG = 4096


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--host", default=None, help="default: GATEWAY_HOST or 127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="default: GATEWAY_PORT or 9000")
    parser.add_argument("--triton-grpc-url", default=None, help="default: TRITON_GRPC_URL or 127.0.0.1:8001")
    args = parser.parse_args(argv)
    overrides = {
        name: value
        for name, value in (
            ("host", args.host),
            ("port", args.port),
            ("triton_grpc_url", args.triton_grpc_url),
        )
        if value is not None
    }
    settings = settings_from_env(**overrides)

    import uvicorn

    from gateway.app import create_app
    from gateway.connections import header_deadline_protocol

    # uvicorn re-raises the SIGTERM it stopped on after its graceful shutdown, so the process would die of
    # that signal (exit status 143 in a pod, reported as an error); a completed stop exits 0 instead.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        # Bound to a host a proxy (if any) sits in front of: X-Forwarded-* rewriting per request buys
        # nothing here.
        proxy_headers=False,
        backlog=LISTEN_BACKLOG,
        http=header_deadline_protocol(settings.header_timeout),
        timeout_keep_alive=settings.keep_alive_timeout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
