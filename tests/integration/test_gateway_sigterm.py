"""The gateway's stop as a pod sees it: SIGTERM (what the kubelet sends) ends a graceful shutdown with exit
status 0, not death by the signal (uvicorn re-raises it once done; a pod would report exit code 143)."""

from __future__ import annotations

import signal

from tests.integration.gateway_process import GatewayProcess
from tools.ports import free_port


def test_sigterm_stops_the_gateway_with_exit_status_0():
    # No Triton behind it: /health answers 503, but the gateway is up, which is all a stop needs.
    with GatewayProcess(f"127.0.0.1:{free_port()}", wait_for="/version") as gateway:
        process = gateway._process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0, gateway.log_path.read_text()[-2000:]
