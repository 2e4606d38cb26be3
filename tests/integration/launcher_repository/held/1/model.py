"""Echoes INPUT0; its load waits while the file named by $LAUNCHER_TEST_HOLD_LOAD exists (at most 60 s)."""

import os
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils

HOLD_MAX_SECS = 60.0


class TritonPythonModel:
    def initialize(self, args):
        hold = os.environ.get("LAUNCHER_TEST_HOLD_LOAD")
        deadline = time.monotonic() + HOLD_MAX_SECS
        while hold and Path(hold).exists() and time.monotonic() < deadline:
            time.sleep(0.1)

    def execute(self, requests):
        return [
            pb_utils.InferenceResponse(
                [pb_utils.Tensor("OUTPUT0", pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy())]
            )
            for request in requests
        ]
