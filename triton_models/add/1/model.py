"""`add`: the overhead floor. OUTPUT0 = INPUT0 + INPUT1 (FP32[16]).

execute() does the least possible work so that what a client measures against
this model is Triton + python-backend + network overhead, not compute.
"""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        get = pb_utils.get_input_tensor_by_name
        tensor = pb_utils.Tensor
        response = pb_utils.InferenceResponse
        return [
            response(
                output_tensors=[
                    tensor("OUTPUT0", get(r, "INPUT0").as_numpy() + get(r, "INPUT1").as_numpy())
                ]
            )
            for r in requests
        ]
