"""`iris`: the classic iris classifier, a real trained model run by onnxruntime.

Input INPUT FP32[batch, 4] = (sepal length, sepal width, petal length, petal
width) in cm; output PROBABILITIES FP32[batch, 3] = class probabilities over
(setosa, versicolor, virginica).

The model is `iris.onnx` beside this file: a logistic regression trained at build time
(`make install`: examples/iris_service/train.py) from scikit-learn's bundled iris data
and exported with skl2onnx, the very model the FastAPI iris service serves. All
requests handed to one execute() call (dynamic batching) are concatenated and run as
one onnxruntime call.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort  # type: ignore[import-not-found]
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

MODEL_FILE = "iris.onnx"


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        path = Path(args["model_repository"]) / args["model_version"] / MODEL_FILE
        if not path.is_file():
            raise pb_utils.TritonModelException(
                f"{path} is missing: build it with `make install` (examples/iris_service/train.py)"
            )
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name
        # outputs: label, then probabilities (skl2onnx, zipmap off)
        self.probs = self.session.get_outputs()[1].name

    def predict(self, x: np.ndarray) -> np.ndarray:
        (probs,) = self.session.run([self.probs], {self.input: x.astype(np.float32)})
        return np.asarray(probs, dtype=np.float32)

    def execute(self, requests: list[Any]) -> list[Any]:
        inputs = [pb_utils.get_input_tensor_by_name(r, "INPUT").as_numpy() for r in requests]
        if len(inputs) == 1:
            probs = [self.predict(inputs[0])]
        else:
            sizes = np.cumsum([len(a) for a in inputs])[:-1]
            probs = np.split(self.predict(np.concatenate(inputs)), sizes)
        return [
            pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("PROBABILITIES", p)])
            for p in probs
        ]
