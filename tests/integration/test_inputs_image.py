"""Realistic inputs against the real Triton `image` model: mixed resolutions and aspect
ratios from two agents, files of images, and preflight refusing what the server cannot take."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from coordinator.preflight import PreflightError, preflight_check
from coordinator.run import RunOptions, execute
from tests.triton_fixture import TritonEndpoint
from volley.cli import app
from volley.plan import plan_from_dict
from volley.request import build_plan_pool

#: Landscape 4:3, portrait 3:4, wide 16:9 and square: sizes and aspect ratios vary.
SHAPES = ["96x128x3:4", "320x240x3:2", "270x480x3:1", "400x400x3:1"]


def _plan(
    triton: TritonEndpoint, inputs: list[dict[str, object]], **extra: object
) -> dict[str, object]:
    return {
        "target": triton.grpc_url,
        "model": "image",
        "seed": 21,
        "name": "images",
        "load": {"mode": "open", "arrival": "poisson", "rate": 40, "duration": "3s"},
        "inputs": inputs,
        "validity": {"min_duration_s": 1, "min_requests": 10},
        **extra,
    }


async def test_mixed_image_sizes_two_agents(
    triton_server: TritonEndpoint, agent_pair: list[str], tmp_path: Path
) -> None:
    plan = plan_from_dict(_plan(triton_server, [{"name": "IMAGE", "shapes": SHAPES}]))
    result = await execute(plan, agent_pair, RunOptions(out_dir=tmp_path, start_lead_s=1.5))
    s = result.summary
    req = s["requests"]
    assert req["errors"] == 0 and req["ok"] == req["sent"] == req["scheduled"] > 60
    assert all(a["sent"] > 0 for a in s["agents"])
    # the pool every worker built: exact weights of the 4 shapes, bounded and reported
    pool = s["input_pool"]
    assert pool["distinct_shapes"] == 4 and pool["exact_weights"] and pool["workers"] == 2
    assert 0 < pool["bytes_per_worker"] <= pool["max_bytes_per_worker"]
    assert all(a["input_pool_bytes"] == pool["bytes_per_worker"] for a in s["agents"])
    # latency by payload size: several buckets, every sent request in one of them
    by_size = s["latency_by_payload"]
    assert len(by_size) >= 3
    assert sum(b["sent"] for b in by_size) == req["sent"]
    assert all(b["latency_ms"]["p50"] > 0 for b in by_size)
    by_shape = {r["shape"]: r for r in s["latency_by_shape"]}
    assert set(by_shape) == {t.split(":")[0] for t in SHAPES}
    # every record carries the payload the seed and its global index pick, whatever the agent
    raw = pq.read_table(result.run_dir / "requests.parquet")
    expected = build_plan_pool(result.plan)
    index = raw.column("index").to_numpy()
    picks = expected.pick_many(index)
    shapes = raw.column("input_shape").to_pylist()
    sizes = raw.column("req_bytes").to_numpy()
    assert shapes == [expected.shapes[expected.payloads[p].shape_id] for p in picks]
    assert sizes.tolist() == [expected.payloads[p].req_bytes for p in picks]
    assert set(raw.column("agent").to_pylist()) == {0, 1}
    counts = Counter(shapes)
    assert counts["96x128x3"] > counts["270x480x3"]  # weight 4 vs 1
    assert (result.run_dir / "plan.yaml").read_text().count("96x128x3:4") == 1


async def test_preflight_pixels_aspect_and_files(
    triton_server: TritonEndpoint, tmp_path: Path
) -> None:
    pre = await preflight_check(
        plan_from_dict(
            _plan(triton_server, [{"name": "IMAGE", "pixels": "20k..300k", "aspect": "0.5..2"}])
        )
    )
    pool = pre.pool
    assert pool["payloads"] == 64 and pool["distinct_shapes"] > 40 and not pool["exact_weights"]
    assert 60_000 <= pool["request_bytes"]["min"] < pool["request_bytes"]["max"] <= 910_000
    # a directory of images (decoded to HWC UINT8), embedded for the agents
    rng = np.random.default_rng(3)
    for i, (h, w) in enumerate([(120, 160), (200, 100), (64, 64)]):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img.save(tmp_path / f"{i}.{'png' if i % 2 else 'jpg'}")
    pre = await preflight_check(
        plan_from_dict(
            _plan(triton_server, [{"name": "IMAGE", "source": "files", "path": str(tmp_path)}])
        )
    )
    assert {s["shape"] for s in pre.pool["shapes"]} == {"120x160x3", "200x100x3", "64x64x3"}
    assert len(pre.plan.inputs[0].items) == 3


@pytest.mark.parametrize(
    ("inputs", "extra", "needle"),
    [
        ([{"name": "IMAGE", "pixels": "10k..20M"}], {}, "max_pixels 16777216"),
        ([{"name": "IMAGE", "shapes": ["224x224x3", "5000x4000x3"]}], {}, "5000x4000"),
        (
            [{"name": "IMAGE", "shapes": ["224x224x3", "1000x1000x3"]}],
            {"input_pool": {"max_request_bytes": "1MB"}},
            "request limit",
        ),
        ([{"name": "IMAGE", "shape": [224, 224]}], {}, "rank 2"),
        ([{"name": "IMAGE", "datatype": "FP32", "shape": [9, 9, 3]}], {}, "expects UINT8"),
        ([{"name": "PIXELS", "shape": [9, 9, 3]}], {}, "not an input of model 'image'"),
    ],
)
async def test_preflight_refuses_what_the_server_cannot_take(
    triton_server: TritonEndpoint,
    inputs: list[dict[str, object]],
    extra: dict[str, object],
    needle: str,
) -> None:
    with pytest.raises(PreflightError, match=needle) as info:
        await preflight_check(plan_from_dict(_plan(triton_server, inputs, **extra)))
    name = str(inputs[0]["name"])
    assert name in str(info.value) or "request" in str(info.value)


def test_cli_vary_errors_are_one_line(triton_server: TritonEndpoint, tmp_path: Path) -> None:
    runner = CliRunner()
    base = ["run", "--target", triton_server.grpc_url, "--model", "image", "--rate", "5"]
    cases = [
        (["--vary", "IMAGE.pixels=10k..30M"], "max_pixels"),
        (["--vary", "IMAGE.size=3"], "NAME.KEY=VALUE"),
        (["--shape", "IMAGE=100..x3"], "--shape IMAGE"),
        (["--batch-size", "1..4", "--shape", "IMAGE=9x9x3"], "does not batch"),
        (["--input", f"IMAGE=@{tmp_path / 'none'}"], "not a file or directory"),
    ]
    for args, needle in cases:
        res = runner.invoke(app, [*base, *args, "--out", str(tmp_path)])
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output, (args, res.output)
        assert "Traceback" not in res.output
        assert res.output.strip().count("\n") == 0, res.output
