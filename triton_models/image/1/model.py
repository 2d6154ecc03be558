"""`image`: a variable-size image "classifier" with real preprocessing.

Input IMAGE UINT8[H, W, 3] (HWC, RGB, any H and W); output LOGITS FP32[10].

Pipeline (numpy only):
1. Reject images with H * W above the config parameter `max_pixels`
   (default 16777216 = 16 Mpx) or with an empty side, with a clear error.
2. Resize to 64x64, separably per axis: area averaging when shrinking
   over integer bins, one pass over every input pixel, so the cost grows
   linearly with H * W), bilinear interpolation when enlarging.
3. Normalise: x / 255, then (x - mean) / std with the ImageNet mean/std.
4. A small fixed network with RANDOM weights drawn from a seeded generator
   (numpy default_rng(SEED)); it is not trained, the logits mean nothing:
   4x4/stride-4 conv (as matmul, 3->16 ch) + ReLU -> 2x2/stride-2 conv
   (16->32 ch) + ReLU -> global average pool -> dense 32->10.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils  # type: ignore[import-not-found]

SIZE = 64
SEED = 20240611
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
DEFAULT_MAX_PIXELS = 16777216


def _resize_axis(a: np.ndarray, axis: int, out: int) -> np.ndarray:
    n = a.shape[axis]
    if n == out:
        return a.astype(np.float32, copy=False)
    shape = [1] * a.ndim
    shape[axis] = out
    if n > out:
        # Area interpolation: output cell i averages input bin [edges[i], edges[i+1]).
        # One pass over every input pixel; integer accumulation for uint8 input.
        edges = (np.arange(out + 1, dtype=np.int64) * n) // out
        fits_u32 = a.dtype == np.uint8 and (n // out + 1) * 255 < 2**32
        acc: Any = np.uint32 if fits_u32 else np.float64
        counts = np.diff(edges).astype(np.float32).reshape(shape)
        if axis != 0:
            sums = np.add.reduceat(a, edges[:-1], axis=axis, dtype=acc)
            return (sums / counts).astype(np.float32)
        # Axis 0: summing contiguous row blocks is several times faster than reduceat.
        res = np.empty((out, *a.shape[1:]), dtype=np.float32)
        for i in range(out):
            res[i] = a[int(edges[i]) : int(edges[i + 1])].sum(axis=0, dtype=acc)
        return res / counts
    # Bilinear (half-pixel centres, like align_corners=False).
    pos = np.clip((np.arange(out) + 0.5) * (n / out) - 0.5, 0.0, n - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, n - 1)
    w = (pos - lo).astype(np.float32).reshape(shape)
    a_lo = np.take(a, lo, axis=axis).astype(np.float32)
    a_hi = np.take(a, hi, axis=axis).astype(np.float32)
    return a_lo * (1.0 - w) + a_hi * w


def resize(img: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Resize HWC uint8 to (size, size, C) float32 (shrinking before enlarging)."""
    if img.shape[0] >= size:
        return _resize_axis(_resize_axis(img, 0, size), 1, size)
    return _resize_axis(_resize_axis(img, 1, size), 0, size)


def make_weights(seed: int = SEED) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)

    def he(fan_in: int, fan_out: int) -> np.ndarray:
        return (rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    return {
        "w1": he(4 * 4 * 3, 16),
        "b1": np.zeros(16, np.float32),
        "w2": he(2 * 2 * 16, 32),
        "b2": np.zeros(32, np.float32),
        "w3": he(32, 10),
        "b3": np.zeros(10, np.float32),
    }


def _patchify(x: np.ndarray, k: int) -> np.ndarray:
    h, w, c = x.shape
    return x.reshape(h // k, k, w // k, k, c).transpose(0, 2, 1, 3, 4).reshape(h // k, w // k, -1)


def forward(img: np.ndarray, weights: dict[str, np.ndarray]) -> np.ndarray:
    x = (resize(img) * np.float32(1.0 / 255.0) - MEAN) / STD
    x = np.maximum(_patchify(x, 4) @ weights["w1"] + weights["b1"], 0.0)  # 16x16x16
    x = np.maximum(_patchify(x, 2) @ weights["w2"] + weights["b2"], 0.0)  # 8x8x32
    return (x.mean(axis=(0, 1)) @ weights["w3"] + weights["b3"]).astype(np.float32)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        params = json.loads(args["model_config"]).get("parameters", {})
        raw = params.get("max_pixels", {}).get("string_value", str(DEFAULT_MAX_PIXELS))
        self.max_pixels = int(raw)
        self.weights = make_weights()

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            img = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            h, w = int(img.shape[0]), int(img.shape[1])
            if h * w > self.max_pixels:
                message = (
                    f"image: IMAGE is {h}x{w} = {h * w} pixels, more than"
                    f" max_pixels={self.max_pixels} (config parameter); send a smaller image"
                )
            elif h == 0 or w == 0:
                message = f"image: IMAGE must have non-zero height and width, got {h}x{w}"
            else:
                logits = forward(img, self.weights)
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("LOGITS", logits)])
                )
                continue
            responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(message)))
        return responses
