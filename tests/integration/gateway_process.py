"""A real gateway (``python -m gateway``) as a child process on a free port, for the gateway tests."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

import tools.gateway_process


class GatewayProcess(tools.gateway_process.GatewayProcess):
    """``tools.gateway_process.GatewayProcess`` with the gateway's settings as keyword arguments
    (``GatewayProcess(url, GATEWAY_API_KEY="k")``), logging to a temporary file it names when it stops.

    It stays in pytest's session: with autogroup scheduling (Linux's default) a session of its own would
    give the gateway a CPU share of its own next to the test's clients, and the overload tests are timed
    against the share it has always had."""

    def __init__(self, triton_grpc_url: str, wait_for: str = "/health", **environment: str):
        super().__init__(triton_grpc_url, environment, wait_for=wait_for, own_session=False)

    def stop(self, grace: float = tools.gateway_process.GATEWAY_STOP_GRACE_SECS) -> int | None:
        code = super().stop(grace)
        print(f"gateway log: {self.log_path}")
        return code


def post(url: str, body: bytes | str | dict, headers: dict | None = None, timeout: float = 120):
    """(status, headers, parsed JSON or raw bytes) of a POST, errors included."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    data = data.encode() if isinstance(data, str) else data
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    return _open(request, timeout)


def get(url: str, headers: dict | None = None, timeout: float = 30):
    request = urllib.request.Request(url, headers=headers or {})
    return _open(request, timeout)


def _open(request: urllib.request.Request, timeout: float):
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, headers, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        status, headers, raw = error.code, error.headers, error.read()
    try:
        return status, headers, json.loads(raw) if raw else None
    except ValueError:
        return status, headers, raw


@pytest.fixture(scope="session")
def gateway(server):
    """The gateway with default settings in front of the test tritonserver."""
    with GatewayProcess(server.grpc_url) as running:
        yield running


@pytest.fixture(scope="session")
def sdk(gateway):
    import openai

    # The gateway has no key by default; the SDK insists on sending one.
    with openai.OpenAI(api_key="unused", base_url=f"{gateway.url}/v1", max_retries=0, timeout=120) as client:
        yield client
