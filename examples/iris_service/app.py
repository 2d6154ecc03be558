"""A plain JSON prediction service of the seed's shape: FastAPI + uvicorn serving the iris
ONNX model (train.py) with onnxruntime.

    IRIS_MODEL=triton_models/iris/1/iris.onnx .venv-mlserver/bin/uvicorn \\
        --app-dir examples/iris_service app:app --host 127.0.0.1 --port 8000

POST /predict {"features": [[5.1, 3.5, 1.4, 0.2], ...]} (or one row [5.1, 3.5, 1.4, 0.2])
-> {"predictions": ["setosa", ...], "probabilities": [[...], ...]}; GET /health.
"""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException
from pydantic import BaseModel

CLASSES = ("setosa", "versicolor", "virginica")
session = ort.InferenceSession(
    os.environ.get("IRIS_MODEL", "triton_models/iris/1/iris.onnx"),
    providers=["CPUExecutionProvider"],
)
input_name = session.get_inputs()[0].name
app = FastAPI(title="iris")


class Features(BaseModel):
    features: list[list[float]] | list[float]


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/predict")
def predict(req: Features) -> dict[str, object]:
    x = np.asarray(req.features, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] != 4 or x.shape[0] == 0:
        raise HTTPException(422, f"features: expected rows of 4 numbers, got shape {x.shape}")
    labels, probs = session.run(None, {input_name: x})
    return {
        "predictions": [CLASSES[int(i)] for i in labels],
        "probabilities": np.asarray(probs).round(6).tolist(),
    }
