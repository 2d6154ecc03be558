"""`bls`: OUTPUT0 = add(scale(INPUT0), INPUT1), two BLS calls per request."""

from __future__ import annotations

from typing import Any

import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]


def _call(model: str, inputs: list[Any], output: str) -> Any:
    resp = pb_utils.InferenceRequest(
        model_name=model, requested_output_names=[output], inputs=inputs
    ).exec()
    if resp.has_error():
        raise pb_utils.TritonModelException(f"bls: {model}: {resp.error().message()}")
    return pb_utils.get_output_tensor_by_name(resp, output)


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        out = []
        for request in requests:
            x0 = pb_utils.get_input_tensor_by_name(request, "INPUT0")
            x1 = pb_utils.get_input_tensor_by_name(request, "INPUT1")
            try:
                scaled = _call("scale", [pb_utils.Tensor("INPUT", x0.as_numpy())], "OUTPUT")
                total = _call(
                    "add",
                    [pb_utils.Tensor("INPUT0", scaled.as_numpy()), x1],
                    "OUTPUT0",
                )
            except pb_utils.TritonModelException as exc:
                out.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            out.append(
                pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor("OUTPUT0", total.as_numpy())]
                )
            )
        return out
