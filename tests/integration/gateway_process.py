"""A real gateway (``python -m gateway``) as a child process on a free port, for the gateway tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO
from tools.launcher import free_port


class GatewayProcess:
    def __init__(self, triton_grpc_url: str, wait_for: str = "/health", **environment: str):
        self.port = free_port()
        self.environment = {
            "GATEWAY_PORT": str(self.port),
            "GATEWAY_HOST": "127.0.0.1",
            "TRITON_GRPC_URL": triton_grpc_url,
            **environment,
        }
        self.wait_for = wait_for
        fd, name = tempfile.mkstemp(prefix="gateway-", suffix=".log")
        os.close(fd)
        self.log_path = Path(name)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> GatewayProcess:
        env = {key: value for key, value in os.environ.items() if not key.startswith("GATEWAY_")}
        env.update(self.environment)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "gateway"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 60
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(self.url + self.wait_for, timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"gateway not ready: {self.log_path.read_text()}")
            time.sleep(0.1)

    def __exit__(self, *exc_info: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        print(f"gateway log: {self.log_path}")


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
