"""Embedded items (files, JSON entries): their encoding, and decoding them on every worker."""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from volley.inputs.shapes import DTYPES, check_item, element_count, hw_axes, item_dims, shape_text
from volley.plan import InputSpec, PlanError
from volley.shown import shown

_CHANNELS_MODE = {1: "L", 3: "RGB", 4: "RGBA"}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PlanError(f"{where}: not valid base64") from None


def count_bytes_elems(data: bytes, where: str) -> int:
    n, off = 0, 0
    while off < len(data):
        if off + 4 > len(data):
            raise PlanError(f"{where}: BYTES data is not 4-byte-length-prefixed elements")
        off += 4 + int.from_bytes(data[off : off + 4], "little")
        n += 1
    if off != len(data):
        raise PlanError(f"{where}: BYTES data is not 4-byte-length-prefixed elements")
    return n


def _open_image(data: bytes, where: str, load: bool = True) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(io.BytesIO(data))
        if load:
            img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise PlanError(f"{where}: not a readable image ({exc})") from None
    return img


def _image_channels(spec: InputSpec, batched: bool, native: int) -> int:
    item = item_dims(spec, batched)
    _, _, c = hw_axes(spec, item) if len(item) in (2, 3) else (0, 0, None)
    if c is None:
        return 1 if len(item) == 2 else native
    return item[c] if item[c] > 0 else native


@dataclass(frozen=True)
class ItemInfo:
    shape: tuple[int, ...]  #: item shape (as sent, layout applied)
    elements: int  #: BYTES: elements; else product of shape
    nbytes: int  #: bytes of tensor data for one item


class ItemCache:
    """Item shapes and sizes, found once per item (image headers are read, not decoded)."""

    def __init__(self, spec: InputSpec, batched: bool) -> None:
        self.spec = spec
        self.batched = batched
        self._info: dict[int, ItemInfo] = {}

    def where(self, k: int) -> str:
        return f"input {shown(self.spec.name)} {self.spec.items[k].name or f'item {k}'}"

    def info(self, k: int) -> ItemInfo:
        got = self._info.get(k)
        if got is None:
            got = self._info[k] = self._find(k)
        return got

    def _find(self, k: int) -> ItemInfo:
        spec, it = self.spec, self.spec.items[k]
        where = self.where(k)
        if spec.datatype == "BYTES":
            data = unb64(it.data, where)
            if it.kind == "tensor":
                n = count_bytes_elems(data, where)
                return ItemInfo(it.shape, n, len(data))
            ones = tuple(1 for _ in item_dims(spec, self.batched))
            return ItemInfo(ones, 1, len(data) + 4)
        itemsize = DTYPES[spec.datatype].itemsize
        if it.kind == "tensor":
            return ItemInfo(it.shape, element_count(it.shape), element_count(it.shape) * itemsize)
        if it.kind == "image":
            # The header gives the size; the pixels are decoded only when the pool is built.
            img = _open_image(unb64(it.data, where), where, load=False)
            model_item = item_dims(spec, self.batched)
            native = len(img.getbands())
            c = _image_channels(spec, self.batched, native if native in (1, 3, 4) else 3)
            if len(model_item) == 2:
                shape: tuple[int, ...] = (img.height, img.width)
            elif hw_axes(spec, model_item)[2] == 0:
                shape = (c, img.height, img.width)
            else:
                shape = (img.height, img.width, c)
            check_item(spec, shape, model_item, f"{where}: shape {shape_text(shape)}")
            return ItemInfo(shape, element_count(shape), element_count(shape) * itemsize)
        arr = self.array(k)
        return ItemInfo(tuple(arr.shape), int(arr.size), int(arr.size) * itemsize)

    def array(self, k: int, resize_hw: tuple[int, int] | None = None) -> npt.NDArray[Any]:
        """Decode item k to the input's dtype (images: layout and channels as the model's)."""
        spec, it = self.spec, self.spec.items[k]
        where = self.where(k)
        dt = DTYPES[spec.datatype]
        data = unb64(it.data, where)
        model_item = item_dims(spec, self.batched)
        if it.kind == "image":
            img = _open_image(data, where)
            native = len(img.getbands())
            c = _image_channels(spec, self.batched, native if native in (1, 3, 4) else 3)
            mode = _CHANNELS_MODE.get(c)
            if mode is None:
                raise PlanError(f"{where}: the model wants {c} channels; images have 1, 3 or 4")
            if img.mode != mode:
                img = img.convert(mode)
            if resize_hw is not None and (img.height, img.width) != resize_hw:
                from PIL import Image

                img = img.resize((resize_hw[1], resize_hw[0]), Image.Resampling.BILINEAR)
            arr: npt.NDArray[Any] = np.asarray(img)
            if arr.ndim == 2 and len(model_item) == 3:
                arr = arr[:, :, None]
            if len(model_item) == 3 and hw_axes(spec, model_item)[2] == 0:
                arr = np.ascontiguousarray(arr.transpose(2, 0, 1))
            elif len(model_item) == 2 and arr.ndim == 3:
                arr = arr[:, :, 0]
            out = arr.astype(dt)
        elif it.kind == "npy":
            try:
                loaded = np.load(io.BytesIO(data), allow_pickle=False)
            except (ValueError, OSError) as exc:
                raise PlanError(f"{where}: not a readable .npy file ({exc})") from None
            if not np.can_cast(loaded.dtype, dt, "same_kind"):
                raise PlanError(
                    f"{where}: array of {loaded.dtype} cannot be sent as {spec.datatype}"
                )
            out = loaded.astype(dt)
        elif it.kind in ("raw", "tensor"):
            if len(data) % dt.itemsize:
                raise PlanError(
                    f"{where}: {len(data)} bytes is not a whole number of {spec.datatype}"
                )
            flat = np.frombuffer(data, dtype=dt)
            shape = list(it.shape) if it.shape else _infer_shape(model_item, flat.size, where)
            out = flat.reshape(shape)
        else:
            raise PlanError(f"{where}: unknown item kind {shown(it.kind)}")
        check_item(spec, out.shape, model_item, f"{where}: shape {shape_text(out.shape)}")
        return out

    def element(self, k: int) -> bytes:
        """BYTES inputs: the item as serialized elements (length-prefixed)."""
        it = self.spec.items[k]
        data = unb64(it.data, self.where(k))
        if it.kind == "tensor":
            return data
        return len(data).to_bytes(4, "little") + data


def _infer_shape(model_item: Sequence[int], n: int, where: str) -> list[int]:
    dyn = [i for i, d in enumerate(model_item) if d < 0]
    fixed_n = element_count([d for d in model_item if d >= 0])
    if not dyn:
        if fixed_n != n:
            raise PlanError(
                f"{where}: {n} values, the model's dims {list(model_item)} need {fixed_n}"
            )
        return list(model_item)
    if len(dyn) == 1 and fixed_n > 0 and n % fixed_n == 0:
        return [n // fixed_n if d < 0 else d for d in model_item]
    raise PlanError(f"{where}: raw data cannot fill dims {list(model_item)}; use .npy files")
