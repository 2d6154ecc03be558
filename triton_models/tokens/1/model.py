"""`tokens`: a decoupled model whose stream of responses has a known timing.

Inputs FIRST_MS FP32[1], GAP_MS FP32[1], COUNT INT32[1], ERROR_AT INT32[1] (-1: none).
Each request is answered with COUNT responses, each one output TOKEN INT32[1] (its
position, 0-based): response k is sent FIRST_MS + k * GAP_MS milliseconds after the
model took the request (deadlines from one start, so sleeping late never drifts), then
an empty response carrying only the final flag. A request parameter `max_tokens`
(integer) caps COUNT, like an LLM's output length. With ERROR_AT = e in [0, COUNT) the
response at position e is an error, which ends the stream. Requests are handled one at
a time (execute returns after the last response), so with one instance a request waits
for those before it: the model's capacity is 1000 / (FIRST_MS + (COUNT - 1) * GAP_MS)
requests/s. Values out of range (delays negative, not finite or above `max_delay_ms`,
COUNT negative or above `max_count`) are answered with one error response.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


def _scalar(request: Any, name: str) -> float | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    return float(tensor.as_numpy().reshape(-1)[0])


def _max_tokens(request: Any, default: float) -> float:
    """The request parameter `max_tokens`, when sent (an integer), else `default`."""
    try:
        params = json.loads(request.parameters() or "{}")
    except ValueError:
        return default
    value = params.get("max_tokens")
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else default


def _sleep_until(deadline: float) -> None:
    left = deadline - time.monotonic()
    if left > 0:
        time.sleep(left)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = json.loads(args["model_config"]).get("parameters", {})
        self.max_delay_ms = float(params.get("max_delay_ms", {}).get("string_value", "60000"))
        self.max_count = int(params.get("max_count", {}).get("string_value", "100000"))

    def _bad(self, first: float, gap: float, count: float) -> str:
        for name, v in (("FIRST_MS", first), ("GAP_MS", gap)):
            if not math.isfinite(v) or v < 0.0 or v > self.max_delay_ms:
                return f"tokens: {name} must be a finite number in [0, {self.max_delay_ms:g}] ms"
        if not math.isfinite(count) or count < 0 or count > self.max_count:
            return f"tokens: COUNT must be in [0, {self.max_count}]"
        return ""

    def execute(self, requests: list[Any]) -> None:
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        for request in requests:
            t0 = time.monotonic()
            sender = request.get_response_sender()
            first = _scalar(request, "FIRST_MS") or 0.0
            gap = _scalar(request, "GAP_MS") or 0.0
            count = _scalar(request, "COUNT") or 0.0
            count = min(count, _max_tokens(request, count))
            err_at = _scalar(request, "ERROR_AT")
            bad = self._bad(first, gap, count)
            if bad:
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(bad)), flags=final
                )
                continue
            failed = False
            for k in range(int(count)):
                _sleep_until(t0 + (first + k * gap) / 1000.0)
                if err_at is not None and err_at >= 0 and int(err_at) == k:
                    msg = f"tokens: error at response {k} (ERROR_AT)"
                    sender.send(
                        pb_utils.InferenceResponse(error=pb_utils.TritonError(msg)), flags=final
                    )
                    failed = True
                    break
                out = pb_utils.Tensor("TOKEN", np.array([k], np.int32))
                sender.send(pb_utils.InferenceResponse(output_tensors=[out]))
            if not failed:
                sender.send(flags=final)
        return None
