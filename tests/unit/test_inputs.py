"""Input specs against model metadata, data sources, and the weighted payload pool (no server)."""

from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tritonclient.grpc import service_pb2

from volley import inputs as vin
from volley.plan import InputSpec, Plan, PlanError, plan_from_dict
from volley.request import RequestPool, build_plan_pool, build_pool, pick_index

IMAGE_MODEL = [("IMAGE", "UINT8", (-1, -1, 3))]
IRIS_MODEL = [("INPUT", "FP32", (-1, 4))]


def plan_of(inputs: list[dict[str, Any]], **extra: Any) -> Plan:
    return plan_from_dict(
        {"target": "127.0.0.1:1", "model": "m", "seed": 7, "load": {"rate": 10}, "inputs": inputs}
        | extra
    )


def resolved(
    inputs: list[dict[str, Any]],
    model: list[tuple[str, str, tuple[int, ...]]] = IMAGE_MODEL,
    max_batch: int = 0,
    **extra: Any,
) -> Plan:
    return vin.resolve_specs(plan_of(inputs, **extra), model, max_batch, "m")


def decode(body: bytes) -> service_pb2.ModelInferRequest:
    return service_pb2.ModelInferRequest.FromString(body)


def shares(pool: RequestPool) -> dict[str, float]:
    out: Counter[str] = Counter()
    for p, w in zip(pool.payloads, pool.weights, strict=True):
        out[pool.shapes[p.shape_id]] += w  # type: ignore[assignment]
    return dict(out)


# ---- plan syntax ------------------------------------------------------------------------


def test_plan_input_syntax_round_trips() -> None:
    p = plan_of(
        [
            {"name": "IMAGE", "pixels": {"uniform": ["50k", "300k"]}, "aspect": "0.5..2"},
            {"name": "TEXT", "length": {"lognormal": [100, 1], "min": 1, "max": 4096}},
            {"name": "X", "dims": "1..8x4"},
            {"name": "Y", "shapes": [{"shape": [224, 224, 3], "weight": 3}, "480x640x3"]},
        ],
        batch_size="1:5|4:3",
        input_pool={"payloads": 32, "max_bytes": "64MB", "max_request_bytes": "4MiB"},
    )
    img, text, x, y = p.inputs
    assert img.pixels == "50000..300000" and img.aspect == "0.5..2.0"
    assert text.length == "lognormal(100,1,min=1,max=4096)"
    assert x.dims == ("1..8", "4")
    assert y.shapes == ("224x224x3:3", "480x640x3")
    assert p.batch_size == "1:5|4:3"
    assert (p.input_pool.payloads, p.input_pool.max_bytes) == (32, 64_000_000)
    assert p.input_pool.max_request_bytes == 4 * 2**20
    assert Plan.from_json(p.to_json()) == p


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "I", "dims": "1..2", "shapes": ["1"]}, "one of dims, shapes, pixels"),
        ({"name": "I", "shape": [1], "dims": "1..2"}, "fixed shape or dims"),
        ({"name": "I", "aspect": "1..2"}, "needs pixels"),
        ({"name": "I", "source": "files"}, "needs a path"),
        ({"name": "I", "source": "constant"}, "needs a value"),
        ({"name": "I", "pixels": "lots"}, "input I.pixels"),
        ({"name": "I", "shapes": ["1x2", "1"]}, "same number of dims"),
        ({"name": "I", "source": "json", "path": "x.json", "dims": "3"}, "own shapes"),
    ],
)
def test_plan_input_errors(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(PlanError, match=message):
        plan_of([spec])


def test_plan_pool_and_duplicate_errors() -> None:
    with pytest.raises(PlanError, match="given twice"):
        plan_of([{"name": "A"}, {"name": "A"}])
    with pytest.raises(PlanError, match="payloads"):
        plan_of([], input_pool={"payloads": 0})
    with pytest.raises(PlanError, match="max_bytes"):
        plan_of([], input_pool={"max_bytes": "10GB"})


def test_yaml_drops_embedded_items_of_a_path() -> None:
    p = plan_of([{"name": "I", "source": "files", "path": "/imgs"}])
    item = {"kind": "raw", "data": base64.b64encode(b"abc").decode(), "name": "a"}
    with_items = plan_from_dict(
        {**p.to_dict(), "inputs": [{**p.to_dict()["inputs"][0], "items": [item]}]}
    )
    assert len(with_items.inputs[0].items) == 1
    assert "items: []" in with_items.to_yaml()
    assert Plan.from_json(with_items.to_json()).inputs[0].items == with_items.inputs[0].items


# ---- resolution against the model -----------------------------------------------------


def test_resolve_fills_from_metadata() -> None:
    p = vin.resolve_specs(plan_of([]), [("A", "FP32", (16,)), ("B", "INT32", (2, 2))], 0, "m")
    assert [(s.name, s.datatype, s.shape) for s in p.inputs] == [
        ("A", "FP32", (16,)),
        ("B", "INT32", (2, 2)),
    ]
    assert p.batch_size == ""
    batched = vin.resolve_specs(plan_of([]), IRIS_MODEL, 64, "iris")
    assert batched.inputs[0].shape == (1, 4) and batched.max_batch_size == 64


@pytest.mark.parametrize(
    ("inputs", "model", "max_batch", "extra", "message"),
    [
        ([{"name": "NOPE"}], IMAGE_MODEL, 0, {}, "'NOPE' is not an input of model"),
        ([{"name": "IMAGE", "datatype": "FP32"}], IMAGE_MODEL, 0, {}, "model expects UINT8"),
        ([{"name": "IMAGE"}], IMAGE_MODEL, 0, {}, "dynamic dims"),
        ([{"name": "IMAGE", "shape": [2, 2]}], IMAGE_MODEL, 0, {}, "rank 2"),
        ([{"name": "IMAGE", "shape": [2, 2, 4]}], IMAGE_MODEL, 0, {}, "dim 2 is 4"),
        ([{"name": "IMAGE", "dims": "1..9x1..9"}], IMAGE_MODEL, 0, {}, "dims has 2 entries"),
        ([{"name": "IMAGE", "dims": "9x9x1..3"}], IMAGE_MODEL, 0, {}, "fixed at 3"),
        ([{"name": "IMAGE", "shapes": ["9x9x4"]}], IMAGE_MODEL, 0, {}, "dim 2 is 4"),
        (
            [{"name": "IMAGE", "pixels": "1..9"}],
            [("IMAGE", "UINT8", (5, -1, 3))],
            0,
            {},
            "fixes dim 0",
        ),
        ([{"name": "IMAGE", "pixels": "0..9"}], IMAGE_MODEL, 0, {}, "below 1"),
        ([{"name": "IMAGE", "shape": [2, 2, 3], "length": "3"}], IMAGE_MODEL, 0, {}, "BYTES"),
        ([{"name": "INPUT", "shape": [65, 4]}], IRIS_MODEL, 64, {}, "max_batch_size 64"),
        ([], IRIS_MODEL, 64, {"batch_size": "1..100"}, "can reach 100"),
        ([], IRIS_MODEL, 64, {"batch_size": "0..4"}, ">= 1"),
        ([{"name": "INPUT", "shape": [8, 4]}], IRIS_MODEL, 64, {"batch_size": "2"}, "batch dim"),
        ([], [*IMAGE_MODEL[:0], ("A", "FP32", (2,))], 0, {"batch_size": "4"}, "does not batch"),
        (
            [{"name": "A", "source": "constant", "value": "x"}],
            [("A", "FP32", (2,))],
            0,
            {},
            "not a valid",
        ),
        ([{"name": "A"}], [("A", "COMPLEX", (2,))], 0, {}, "not supported"),
    ],
)
def test_resolve_errors_name_the_input(
    inputs: list[dict[str, Any]],
    model: list[tuple[str, str, tuple[int, ...]]],
    max_batch: int,
    extra: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(PlanError, match=message):
        resolved(inputs, model, max_batch, **extra)


def test_resolve_varying_batch_moves_fixed_shapes_to_dims() -> None:
    p = resolved([{"name": "INPUT", "shape": [4]}], IRIS_MODEL, 64, batch_size="1|8")
    assert p.inputs[0].shape == () and p.inputs[0].dims == ("4",)
    assert p.batch_size == "1|8"
    pool = build_plan_pool(p)
    assert shares(pool) == pytest.approx({"1x4": 0.5, "8x4": 0.5})
    assert {p.batch_size for p in pool.payloads} == {1, 8}
    # a fixed full shape keeps its batch dim
    q = resolved([{"name": "INPUT", "shape": [8, 4]}], IRIS_MODEL, 64)
    assert q.inputs[0].shape == (8, 4) and build_plan_pool(q).payloads[0].batch_size == 8


# ---- the pool -------------------------------------------------------------------------


def test_discrete_choices_are_weighted_exactly() -> None:
    p = resolved([{"name": "IMAGE", "shapes": ["8x8x3:3", "16x12x3:1", "4x4x3:0.5"]}])
    pool = build_plan_pool(p)
    assert pool.exact
    want = {"8x8x3": 3 / 4.5, "16x12x3": 1 / 4.5, "4x4x3": 0.5 / 4.5}
    assert shares(pool) == pytest.approx(want)
    # random data: several distinct payloads per shape, the weight shared among them
    assert len(pool.payloads) >= 60 and len({p.body for p in pool.payloads}) == len(pool.payloads)
    picks = Counter(
        pool.shapes[pool.payloads[i].shape_id] for i in pool.pick_many(np.arange(90_000))
    )
    for shape, share in want.items():
        assert abs(picks[shape] / 90_000 - share) < 0.01
    body = decode(pool.payloads[0].body)
    assert body.inputs[0].name == "IMAGE" and body.inputs[0].datatype == "UINT8"
    assert len(body.raw_input_contents[0]) == int(np.prod(body.inputs[0].shape))


def test_zeros_need_one_payload_per_shape() -> None:
    p = resolved([{"name": "IMAGE", "source": "zeros", "shapes": ["8x8x3:3", "16x12x3"]}])
    pool = build_plan_pool(p)
    assert len(pool.payloads) == 2 and pool.exact
    assert set(decode(pool.payloads[0].body).raw_input_contents[0]) == {0}


def test_continuous_ranges_are_stratified() -> None:
    p = resolved([{"name": "IMAGE", "source": "zeros", "pixels": "1000..5000", "aspect": "0.5..2"}])
    pool = build_plan_pool(p)
    assert not pool.exact and len(pool.payloads) == 64
    px, ar = [], []
    for d in pool.draws:
        h, w, c = d.inputs[0].shape
        assert c == 3
        px.append(h * w)
        ar.append(w / h)
    # Latin hypercube: one draw in each 1/64th of each range (up to rounding of sides)
    assert min(px) >= 1000 * 0.97 and max(px) <= 5000 * 1.03
    counts = np.histogram(px, bins=8, range=(1000, 5000))[0]
    assert counts.min() >= 5, counts
    assert min(ar) >= 0.45 and max(ar) <= 2.1


def test_dims_bytes_lengths_and_constants() -> None:
    model = [("TEXT", "BYTES", (-1,)), ("K", "INT32", (1,))]
    p = resolved(
        [
            {"name": "TEXT", "dims": "1..3", "length": "10|1000"},
            {"name": "K", "source": "constant", "value": 7},
        ],
        model,
    )
    pool = build_plan_pool(p)
    assert pool.exact  # 3 counts x 2 lengths = 6 combinations
    assert len(pool.shapes) == 6 and "2[1000B]" in pool.shapes[0] + ";".join(pool.shapes)
    for payload, d in zip(pool.payloads, pool.draws, strict=True):
        req = decode(payload.body)
        n, length = d.inputs[0].shape[0], d.inputs[0].length
        raw = req.raw_input_contents[0]
        assert len(raw) == n * (4 + length)
        assert int.from_bytes(raw[:4], "little") == length
        assert np.frombuffer(req.raw_input_contents[1], "<i4").tolist() == [7]


def test_pool_is_identical_across_builders_and_pick_is_pure() -> None:
    p = resolved([{"name": "IMAGE", "pixels": "100..900"}])
    a, b = build_plan_pool(p), build_plan_pool(p)
    assert [x.body for x in a.payloads] == [x.body for x in b.payloads]
    idx = np.arange(-5, 3000, dtype=np.int64)
    many = a.pick_many(idx)
    assert [a.pick(int(i)) for i in idx] == many.tolist()
    assert pick_index(p.seed, 12, a._cum_list) == a.pick(12)
    # another seed: other picks
    c = build_plan_pool(plan_from_dict({**p.to_dict(), "seed": 8}))
    assert c.pick_many(idx).tolist() != many.tolist()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0.05, 5), min_size=1, max_size=6), st.integers(0, 2**40))
def test_picks_follow_the_weights(weights: list[float], seed: int) -> None:
    pool = RequestPool(
        [vin_payload(i) for i in range(len(weights))],
        [str(i) for i in range(len(weights))],
        weights,
        seed=seed,
    )
    n = 20_000
    counts = np.bincount(pool.pick_many(np.arange(n, dtype=np.int64)), minlength=len(weights))
    total = sum(weights)
    for c, w in zip(counts, weights, strict=True):
        p = w / total
        assert abs(c / n - p) <= 5 * np.sqrt(p * (1 - p) / n) + 1e-3


def vin_payload(i: int) -> Any:
    from volley.request import Payload

    return Payload(b"x", 1, i, 1)


def test_pool_memory_bound() -> None:
    # 64 random 30x30x3 draws = ~170 kB; a 64 kB bound keeps fewer, never more
    p = resolved([{"name": "IMAGE", "dims": "20..40x20..40x3"}], input_pool={"max_bytes": "64kB"})
    pool = build_plan_pool(p)
    assert 1 <= len(pool.payloads) < 64 and pool.total_bytes <= 64_000
    assert pool.describe()["payloads_requested"] == 64
    # exact choices: copies shrink to one per shape, then it is an error
    q = resolved(
        [{"name": "IMAGE", "shapes": ["40x40x3", "60x60x3"]}], input_pool={"max_bytes": "20kB"}
    )
    small = build_plan_pool(q)
    assert 2 <= len(small.payloads) < 64 and small.total_bytes <= 20_000
    r = resolved([{"name": "IMAGE", "shapes": ["100x100x3"]}], input_pool={"max_bytes": "10kB"})
    with pytest.raises(PlanError, match="max_bytes"):
        build_plan_pool(r)


def test_describe() -> None:
    p = resolved([{"name": "IMAGE", "shapes": ["8x8x3:3", "16x16x3"]}])
    d = build_plan_pool(p).describe()
    assert d["distinct_shapes"] == 2 and d["exact_weights"]
    assert d["shapes"][0]["shape"] == "8x8x3" and d["shapes"][0]["share"] == pytest.approx(0.75)
    assert d["request_bytes"]["min"] < d["request_bytes"]["max"]
    assert d["bytes_per_worker"] == sum(p.req_bytes for p in build_plan_pool(p).payloads)


def test_legacy_build_pool() -> None:
    spec = InputSpec("A", "FP32", (16,), "random")
    pool = build_pool("add", "", (spec,), ("OUT",), seed=3, variants=8)
    assert len(pool.payloads) == 8 and pool.shapes == ["16"]
    const = build_pool("add", "", (InputSpec("A", "FP32", (2,), "constant", 1.5),), (), seed=3)
    assert len(const.payloads) == 1
    req = decode(const.payloads[0].body)
    assert np.frombuffer(req.raw_input_contents[0], "<f4").tolist() == [1.5, 1.5]
    assert req.inputs[0].shape == [2]


# ---- files --------------------------------------------------------------------------


def _images(d: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "a.png": rng.integers(0, 256, (30, 40, 3), dtype=np.uint8),
        "b.png": rng.integers(0, 256, (20, 20, 3), dtype=np.uint8),
        "g.png": rng.integers(0, 256, (10, 12), dtype=np.uint8),
    }
    for name, arr in arrays.items():
        Image.fromarray(arr).save(d / name)
    Image.fromarray(arrays["a.png"]).convert("RGBA").save(d / "c.png")
    Image.fromarray(arrays["b.png"]).save(d / "d.jpg", quality=90)
    (d / "notes.txt").write_text("not an image")
    return arrays


def test_image_files_decode_to_hwc(tmp_path: Path) -> None:
    arrays = _images(tmp_path)
    p = vin.embed_sources(resolved([{"name": "IMAGE", "source": "files", "path": str(tmp_path)}]))
    assert [it.name for it in p.inputs[0].items] == ["a.png", "b.png", "c.png", "d.jpg", "g.png"]
    pool = build_plan_pool(p)
    assert pool.exact and len(pool.payloads) == 5
    assert shares(pool) == pytest.approx({"30x40x3": 0.4, "20x20x3": 0.4, "10x12x3": 0.2})
    got = {}
    for payload in pool.payloads:
        req = decode(payload.body)
        shape = tuple(req.inputs[0].shape)
        got[shape] = [
            *got.get(shape, []),
            np.frombuffer(req.raw_input_contents[0], np.uint8).reshape(shape),
        ]
    assert any(np.array_equal(x, arrays["a.png"]) for x in got[(30, 40, 3)])  # lossless PNG
    assert any(np.array_equal(x, arrays["b.png"]) for x in got[(20, 20, 3)])
    gray = got[(10, 12, 3)][0]
    assert np.array_equal(gray[:, :, 0], arrays["g.png"])  # L -> RGB replicates the channel


def test_image_files_resized_to_drawn_shapes_and_chw(tmp_path: Path) -> None:
    _images(tmp_path)
    model = [("X", "FP32", (3, -1, -1))]
    p = vin.embed_sources(
        resolved(
            [
                {
                    "name": "X",
                    "source": "files",
                    "path": str(tmp_path / "a.png"),
                    "shapes": ["3x8x16", "3x5x5"],
                }
            ],
            model,
        )
    )
    pool = build_plan_pool(p)
    assert set(pool.shapes) == {"3x8x16", "3x5x5"}
    req = decode(pool.payloads[0].body)
    arr = np.frombuffer(req.raw_input_contents[0], "<f4")
    assert arr.size == int(np.prod(req.inputs[0].shape)) and arr.max() <= 255


def test_npy_and_raw_files(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.arange(8, dtype=np.float32).reshape(2, 4))
    (tmp_path / "y.bin").write_bytes(np.ones(12, "<f4").tobytes())
    model = [("X", "FP32", (-1, 4))]
    p = vin.embed_sources(
        resolved([{"name": "X", "source": "files", "path": str(tmp_path)}], model)
    )
    pool = build_plan_pool(p)
    assert set(pool.shapes) == {"2x4", "3x4"}
    # BYTES inputs take each file whole, as one element
    (tmp_path / "z.txt").write_text("hello")
    q = vin.embed_sources(
        resolved(
            [{"name": "T", "source": "files", "path": str(tmp_path / "z.txt")}],
            [("T", "BYTES", (1,))],
        )
    )
    raw = decode(build_plan_pool(q).payloads[0].body).raw_input_contents[0]
    assert raw == (5).to_bytes(4, "little") + b"hello"


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="not a file or directory"):
        vin.embed_sources(
            resolved([{"name": "IMAGE", "source": "files", "path": str(tmp_path / "no")}])
        )
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(PlanError, match="no images"):
        vin.embed_sources(resolved([{"name": "IMAGE", "source": "files", "path": str(tmp_path)}]))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    p = vin.embed_sources(resolved([{"name": "IMAGE", "source": "files", "path": str(tmp_path)}]))
    with pytest.raises(PlanError, match=r"bad\.png: not a readable image"):
        build_plan_pool(p)
    (tmp_path / "bad.png").unlink()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((5, 4, 3), np.uint8)).save(tmp_path / "b.png")
    model = [("IMAGE", "UINT8", (-1, -1, -1, 3))]
    p = vin.embed_sources(
        resolved(
            [{"name": "IMAGE", "source": "files", "path": str(tmp_path)}], model, 8, batch_size="2"
        )
    )
    with pytest.raises(PlanError, match="cannot share a batch"):
        build_plan_pool(p)
    big = vin.embed_sources(resolved([{"name": "IMAGE", "source": "files", "path": str(tmp_path)}]))
    assert len(big.inputs[0].items) == 2
    with pytest.raises(PlanError, match="total"):
        vin.load_files(big.inputs[0], 0, 64, 10)


def test_many_files_are_subsampled(tmp_path: Path) -> None:
    for i in range(20):
        Image.fromarray(np.full((4, 4 + i, 3), i, np.uint8)).save(tmp_path / f"{i:02d}.png")
    p = vin.embed_sources(
        resolved(
            [{"name": "IMAGE", "source": "files", "path": str(tmp_path)}],
            input_pool={"payloads": 8},
        )
    )
    assert len(p.inputs[0].items) == 8
    again = vin.embed_sources(
        resolved(
            [{"name": "IMAGE", "source": "files", "path": str(tmp_path)}],
            input_pool={"payloads": 8},
        )
    )
    assert again == p  # deterministic from the seed


# ---- perf_analyzer JSON input data -----------------------------------------------------


def _write(tmp_path: Path, doc: object) -> str:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(doc))
    return str(path)


ADD_MODEL = [("INPUT0", "INT32", (4,)), ("INPUT1", "FP32", (-1, 2))]


def test_json_input_data_layouts(tmp_path: Path) -> None:
    b64 = base64.b64encode(np.arange(4, dtype="<i4").tobytes()).decode()
    path = _write(
        tmp_path,
        {
            "data": [
                {"INPUT0": [1, 2, 3, 4], "INPUT1": {"content": [1, 2, 3, 4], "shape": [2, 2]}},
                {"INPUT0": {"b64": b64}, "INPUT1": [[0.5, 1.5]]},
                [{"INPUT0": {"content": {"b64": b64}}, "INPUT1": [0, 1, 2, 3, 4, 5]}],
            ]
        },
    )
    assert vin.json_input_names(path) == ["INPUT0", "INPUT1"]
    spec = [{"name": n, "source": "json", "path": path} for n in ("INPUT0", "INPUT1")]
    p = vin.embed_sources(resolved(spec, ADD_MODEL))
    assert [it.shape for it in p.inputs[1].items] == [(2, 2), (1, 2), (3, 2)]
    pool = build_plan_pool(p)
    assert len(pool.payloads) == 3 and pool.exact
    seen = []
    for payload in pool.payloads:
        req = decode(payload.body)
        a = np.frombuffer(req.raw_input_contents[0], "<i4").tolist()
        b = np.frombuffer(req.raw_input_contents[1], "<f4").reshape(tuple(req.inputs[1].shape))
        seen.append((a, b.shape))
    # both inputs of a payload come from the same entry
    assert sorted(seen, key=str) == sorted(
        [([1, 2, 3, 4], (2, 2)), ([0, 1, 2, 3], (1, 2)), ([0, 1, 2, 3], (3, 2))], key=str
    )


def test_json_bytes_and_batching(tmp_path: Path) -> None:
    raw = b"".join(len(s).to_bytes(4, "little") + s for s in (b"ab", b"cde"))
    entries = [
        {"T": ["hello", "x"]},
        {"T": {"content": {"b64": base64.b64encode(raw).decode()}, "shape": [2]}},
        {"T": ["z"]},
    ]
    model = [("T", "BYTES", (-1, -1))]
    spec = [{"name": "T", "source": "json", "path": _write(tmp_path, {"data": entries[:2]})}]
    p = vin.embed_sources(resolved(spec, model, 4, batch_size="2"))
    pool = build_plan_pool(p)
    # a batch of 2 = two consecutive entries, stacked
    assert all(pl.batch_size == 2 for pl in pool.payloads)
    req = decode(pool.payloads[0].body)
    assert list(req.inputs[0].shape) == [2, 2]
    assert b"hello" in req.raw_input_contents[0] and b"cde" in req.raw_input_contents[0]
    spec = [{"name": "T", "source": "json", "path": _write(tmp_path, {"data": entries})}]
    p = vin.embed_sources(resolved(spec, model, 4, batch_size="2"))
    with pytest.raises(PlanError, match="cannot share a batch"):
        build_plan_pool(p)


def test_json_not_json(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text("{")
    with pytest.raises(PlanError, match="not valid JSON"):
        vin.read_input_data(str(tmp_path / "x.json"))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"nodata": []}, "perf_analyzer layout"),
        ({"data": []}, "no entries"),
        ({"data": [{"INPUT1": [1, 2]}]}, "has no input 'INPUT0'"),
        ({"data": [{"INPUT0": [1, 2, 3]}]}, "12 bytes of data"),
        ({"data": [{"INPUT0": [1, 2, 3, 2**40]}]}, "out of range"),
        ({"data": [{"INPUT0": {"b64": "%%%"}}]}, "not valid base64"),
        ({"data": [{"INPUT0": ["a", "b", "c", "d"]}]}, "must be numbers"),
        ({"data": [{"INPUT0": {"content": [1, 2, 3, 4], "shape": [2, 2]}}]}, "rank 2"),
        ({"data": [{"INPUT0": {"weird": 1}}]}, "expected a list"),
    ],
)
def test_json_errors(tmp_path: Path, doc: object, message: str) -> None:
    path = _write(tmp_path, doc)
    with pytest.raises(PlanError, match=message):
        vin.embed_sources(
            resolved([{"name": "INPUT0", "source": "json", "path": path}], ADD_MODEL[:1])
        )


@pytest.mark.parametrize(
    ("inputs", "model", "max_batch", "extra"),
    [
        ([{"name": "INPUT", "shape": [4]}], IRIS_MODEL, 64, {"batch_size": "1|8"}),
        ([{"name": "INPUT", "shape": [8, 4]}], IRIS_MODEL, 64, {}),
        ([{"name": "IMAGE", "pixels": "1k..9k", "aspect": "0.5..2"}], IMAGE_MODEL, 0, {}),
        ([{"name": "IMAGE", "shape": [5, 6, 3]}], IMAGE_MODEL, 0, {}),
    ],
)
def test_resolved_plan_yaml_re_resolves_to_the_same_pool(
    inputs: list[dict[str, Any]],
    model: list[tuple[str, str, tuple[int, ...]]],
    max_batch: int,
    extra: dict[str, Any],
) -> None:
    import yaml

    first = resolved(inputs, model, max_batch, **extra)
    again = vin.resolve_specs(
        plan_from_dict(yaml.safe_load(first.to_yaml())), model, max_batch, "m"
    )
    assert again == first
    assert [p.body for p in build_plan_pool(again).payloads] == [
        p.body for p in build_plan_pool(first).payloads
    ]


def test_files_take_a_fixed_shape_or_the_models_as_the_size(tmp_path: Path) -> None:
    _images(tmp_path)
    spec = [{"name": "IMAGE", "source": "files", "path": str(tmp_path), "shape": [16, 24, 3]}]
    pool = build_plan_pool(vin.embed_sources(resolved(spec)))
    assert pool.shapes == ["16x24x3"] and len(pool.payloads) == 5
    req = decode(pool.payloads[0].body)
    assert len(req.raw_input_contents[0]) == 16 * 24 * 3
    fixed_model = [("IMAGE", "UINT8", (8, 8, 3))]
    spec = [{"name": "IMAGE", "source": "files", "path": str(tmp_path)}]
    assert build_plan_pool(vin.embed_sources(resolved(spec, fixed_model))).shapes == ["8x8x3"]
    np.save(tmp_path / "x.npy", np.zeros((2, 2, 3), np.uint8))
    spec = [
        {"name": "IMAGE", "source": "files", "path": str(tmp_path / "x.npy"), "shape": [4, 4, 3]}
    ]
    with pytest.raises(PlanError, match="only images can be resized"):
        build_plan_pool(vin.embed_sources(resolved(spec)))


def test_json_entries_default_to_the_plan_shape(tmp_path: Path) -> None:
    path = _write(tmp_path, {"data": [{"X": [1, 2, 3, 4, 5, 6]}]})
    model = [("X", "INT32", (-1, -1))]
    with pytest.raises(PlanError, match="give a"):
        vin.embed_sources(resolved([{"name": "X", "source": "json", "path": path}], model))
    p = vin.embed_sources(
        resolved([{"name": "X", "source": "json", "path": path, "shape": [3, 2]}], model)
    )
    assert build_plan_pool(p).shapes == ["3x2"]
