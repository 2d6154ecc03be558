"""Train the iris classifier from scikit-learn's bundled iris data and export it as ONNX.

Run at build time (`make install` writes triton_models/iris/1/iris.onnx, which Triton's
iris model and the FastAPI iris service both run), in `.venv-mlserver`, which has
scikit-learn and skl2onnx; no download: the iris data ships inside scikit-learn.

    .venv-mlserver/bin/python examples/iris_service/train.py triton_models/iris/1/iris.onnx
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


def train(out: Path) -> float:
    """Fit, export to `out`, and return the held-out accuracy."""
    data = load_iris()
    x = data.data.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, data.target, test_size=0.3, random_state=0, stratify=data.target
    )
    model = LogisticRegression(max_iter=1000).fit(x_train, y_train)
    accuracy = float(model.score(x_test, y_test))
    # zipmap off: probabilities come out as a plain [N, 3] float tensor
    onx = to_onnx(model, x_train[:1], options={id(model): {"zipmap": False}}, target_opset=17)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(onx.SerializeToString())
    return accuracy


if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "triton_models/iris/1/iris.onnx")
    acc = train(path)
    print(f"iris: held-out accuracy {acc:.3f}, model written to {path}")
