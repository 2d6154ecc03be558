"""`iris`: a tiny tabular classifier in the spirit of the classic iris sample.

Input INPUT FP32[batch, 4] = (sepal length, sepal width, petal length, petal
width) in cm; output PROBABILITIES FP32[batch, 3] = softmax over
(setosa, versicolor, virginica).

The network is a 2-layer MLP (4 -> 3 ReLU -> 3) whose weights are FIXED and
HAND-CHOSEN, not trained. They encode the well-known petal rules:
  setosa     if petal length < 2.5
  virginica  if petal length + 2 * petal width > 8.2
  versicolor otherwise
which classify the classic data set well, but the probabilities are not
calibrated. The point of this model is a realistic small batched tabular
workload, not accuracy.

All requests handed to one execute() call (dynamic batching) are concatenated
and evaluated with one matmul per layer.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

# hidden = relu(x @ W1 + b1); units: [setosa-ness, virginica-ness, not-setosa-ness]
W1 = np.array(
    [
        [0.0, 0.0, 0.0],  # sepal length
        [0.0, 0.0, 0.0],  # sepal width
        [-1.0, 1.0, 1.0],  # petal length
        [0.0, 2.0, 0.0],  # petal width
    ],
    dtype=np.float32,
)
B1 = np.array([2.5, -8.0, -2.5], dtype=np.float32)
# logits = hidden @ W2 + b2; columns: setosa, versicolor, virginica
W2 = np.array(
    [
        [5.0, 0.0, 0.0],
        [0.0, -5.0, 5.0],
        [0.0, 3.0, 3.0],
    ],
    dtype=np.float32,
)
B2 = np.array([0.0, 1.0, -1.0], dtype=np.float32)


def predict(x: np.ndarray) -> np.ndarray:
    hidden = np.maximum(x @ W1 + B1, 0.0)
    logits = hidden @ W2 + B2
    logits -= logits.max(axis=1, keepdims=True)
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class TritonPythonModel:
    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        if len(inputs) == 1:
            probs = [predict(inputs[0])]
        else:
            sizes = np.cumsum([len(a) for a in inputs])[:-1]
            probs = np.split(predict(np.concatenate(inputs)), sizes)
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PROBABILITIES", p)])
            for p in probs
        ]
