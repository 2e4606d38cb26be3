"""Sleeps INPUT0 milliseconds, then answers OUTPUT0 = INPUT0."""

import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            value = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            time.sleep(float(value.reshape(-1)[0]) / 1000.0)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", value.astype(np.int32))]))
        return responses
