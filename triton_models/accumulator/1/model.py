"""`accumulator`: the running sum of a sequence (Triton's sequence batcher).

Input INPUT INT32[1]; outputs OUTPUT INT64[1] (the sum of INPUT over the sequence's
steps so far) and COUNT INT32[1] (its steps so far). The sequence is its correlation
ID (control input CORRID); START opens it, END closes it. The model fails loudly, with
an error response, on a step without START (a sequence it does not hold), on a step
after END (an ID it closed and that was not started again), and on a START for a
sequence that is still live (two sequences sharing one ID: a collision), so a load
generator that mixes up IDs, flags or order cannot pass unnoticed. A sequence idle for
longer than the batcher's `max_sequence_idle_microseconds` was released by Triton (the
model is not told): its state is dropped then, and a new START on its ID is no collision.
"""

from __future__ import annotations

import collections
import json
import time
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

#: closed IDs remembered, to tell "after END" from "without START"
_ENDED_KEPT = 100_000


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        #: correlation ID -> [sum, steps, last step's monotonic ns]
        self.live: dict[int | str, list[int]] = {}
        cfg = json.loads(args["model_config"])
        idle_us = int(cfg.get("sequence_batching", {}).get("max_sequence_idle_microseconds", 0))
        self.idle_ns = (idle_us or 1_000_000) * 1000
        self.ended: collections.OrderedDict[int | str, None] = collections.OrderedDict()

    def _step(self, request: Any) -> Any:
        def element(name: str) -> Any:
            return pb_utils.get_input_tensor_by_name(request, name).as_numpy().reshape(-1)[0]

        def scalar(name: str) -> int:
            return int(element(name))

        # the CORRID control (`accumulator`), else the request's own ID (`accumulator_str`)
        tensor = pb_utils.get_input_tensor_by_name(request, "CORRID")
        corrid: int | str
        if tensor is not None:
            corrid = int(tensor.as_numpy().reshape(-1)[0])
        else:
            corrid = str(request.correlation_id())
        start, end, ready = scalar("START"), scalar("END"), scalar("READY")
        value = scalar("INPUT")
        if not ready:
            return f"accumulator: sequence {corrid}: a step that is not READY"
        state = self.live.get(corrid)
        now = time.monotonic_ns()
        if state is not None and now - state[2] > self.idle_ns:
            del self.live[corrid]  # Triton released it when it went idle
            state = None
        if start:
            if state is not None:
                return f"accumulator: sequence {corrid}: START while it is live (a collision)"
            self.ended.pop(corrid, None)
            state = self.live[corrid] = [0, 0, now]
        elif state is None:
            if corrid in self.ended:
                return f"accumulator: sequence {corrid}: a step after its END"
            return f"accumulator: sequence {corrid}: a step without START"
        state[0] += value
        state[1] += 1
        state[2] = now
        out = (state[0], state[1])
        if end:
            del self.live[corrid]
            self.ended[corrid] = None
            if len(self.ended) > _ENDED_KEPT:
                self.ended.popitem(last=False)
        return out

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            got = self._step(request)
            if isinstance(got, str):
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(got)))
                continue
            total, count = got
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("OUTPUT", np.array([[total]], dtype=np.int64)),
                        pb_utils.Tensor("COUNT", np.array([[count]], dtype=np.int32)),
                    ]
                )
            )
        return responses
