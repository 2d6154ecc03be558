"""`sleep`: a model whose compute time is exactly the requested delay.

Input DELAY_MS FP32[1]; output OUT FP32[1] echoes the delay. Each request sleeps
DELAY_MS milliseconds (time.sleep) and requests are handled one at a time, so
with one instance the model's maximum throughput is 1000 / DELAY_MS req/s.
Delays that are negative, not finite or above the config parameter
`max_delay_ms` (default 60000) are answered with an error instead.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = json.loads(args["model_config"]).get("parameters", {})
        self.max_delay_ms = float(params.get("max_delay_ms", {}).get("string_value", "60000"))

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            delay = pb_utils.get_input_tensor_by_name(request, "DELAY_MS").as_numpy()
            value = float(delay.reshape(-1)[0])
            if not math.isfinite(value) or value < 0.0 or value > self.max_delay_ms:
                responses.append(
                    pb_utils.InferenceResponse(
                        error=pb_utils.TritonError(
                            f"sleep: DELAY_MS must be a finite number in [0, {self.max_delay_ms:g}]"
                            f" ms, got {value!r}"
                        )
                    )
                )
                continue
            if value > 0.0:
                time.sleep(value / 1000.0)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUT", delay)])
            )
        return responses
