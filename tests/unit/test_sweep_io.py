"""sweep.json, resume, report and the command line's input checks (fake measurements)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coordinator.sweep.capacity import CapacityInputs
from coordinator.sweep.runner import (
    REPORT_FILE,
    SWEEP_FILE,
    SweepInterrupted,
    SweepSpec,
    SweepTarget,
    load_sweep,
    run_sweep,
)
from coordinator.sweep.search import Measure, StepResult, SweepSettings
from volley.cli import app
from volley.cli.sweep import build_spec
from volley.plan import PlanError, plan_from_dict

CAPACITY = {"one": 47.0, "two": 120.0, "one-x2": 90.0}


def make_spec(**kw: Any) -> SweepSpec:
    plan = plan_from_dict(
        {"target": "127.0.0.1:9", "model": "sleep", "load": {"rate": 1}, "slos": ["p99<100ms"]}
    )
    spec = SweepSpec(
        name="t",
        plan=plan,
        settings=SweepSettings(start=10, growth=2, tolerance=0.05, max_steps=20),
        targets=[
            SweepTarget("one", "127.0.0.1:9", cost_per_hour=1.0),
            SweepTarget("two", "127.0.0.1:10", cost_per_hour=4.0),
            SweepTarget("one-x2", "127.0.0.1:11", replicas=2, scale_of="one"),
        ],
        capacity=CapacityInputs(1000, headroom=0.3, cpus_per_replica=2),
        **kw,
    )
    spec.validate()
    return spec


class Fake:
    """A measure factory: each target passes up to its CAPACITY; optionally interrupts."""

    def __init__(self, interrupt_at: int = -1) -> None:
        self.calls: list[tuple[str, float]] = []
        self.interrupt_at = interrupt_at

    def __call__(self, target: SweepTarget, settings: SweepSettings) -> Measure:
        async def measure(index: int, load: float, longer: int = 0) -> StepResult:
            if len(self.calls) == self.interrupt_at:
                raise SweepInterrupted()
            self.calls.append((target.name, load))
            ok = load <= CAPACITY[target.name]
            mean = 20.0 if ok else 400.0
            return StepResult(
                index,
                load,
                ok,
                "pass" if ok else "server",
                [] if ok else ["SLO failed"],
                offered_rps=load,
                throughput_rps=min(load, CAPACITY[target.name]),
                latency_ms={"p50": mean, "p99": mean * 2, "mean": mean},
                run_dir=f"steps/{target.name}/{index + 1:02d}",
            )

        return measure


async def test_sweep_document_ranking_scaling_and_capacity(tmp_path: Path) -> None:
    spec = make_spec()
    fake = Fake()
    doc = await run_sweep(spec, tmp_path, fake)
    assert doc["state"] == "done"
    assert json.loads((tmp_path / SWEEP_FILE).read_text())["state"] == "done"
    html = (tmp_path / REPORT_FILE).read_text()
    assert "<svg" in html and "Capacity plan: one" in html and "Scaling check" in html
    by_name = {t["name"]: t for t in doc["targets"]}
    one = by_name["one"]
    assert one["outcome"]["limited_by"] == "server"
    assert 47 * 0.95 <= one["max_rps"] <= 47
    # the scaling check starts near 2 x the single-replica maximum
    assert by_name["one-x2"]["start"] == pytest.approx(round(one["max_rps"] * 2 * 0.8, 1))
    sc = doc["scaling"]["one-x2"]
    assert sc["of"] == "one" and sc["efficiency"] == pytest.approx(
        by_name["one-x2"]["max_rps"] / (2 * one["max_rps"]), rel=1e-3
    )
    assert not sc["linear"] or sc["efficiency"] >= 0.9
    # ranking: the scaling check is not a configuration of its own
    assert [r["name"] for r in doc["ranking"]] == ["two", "one"]
    assert doc["ranking"][0]["rank_by_rate"] == 1
    costs = {r["name"]: r["rank_by_cost"] for r in doc["ranking"]}
    assert costs == {"one": 1, "two": 2}  # 1.0/0.047 < 4.0/0.12 per 1k req/s
    cap_one = doc["capacity"]["one"]
    per = one["max_rps"] * min(sc["efficiency"], 1.0)
    assert cap_one["replicas"] == math.ceil(1300 / per)
    assert cap_one["cpus"] == 2 * cap_one["replicas"]
    assert "two" in doc["capacity"] and "one-x2" not in doc["capacity"]


async def test_interrupted_sweep_resumes_without_repeating_steps(tmp_path: Path) -> None:
    spec = make_spec()
    with pytest.raises(SweepInterrupted):
        await run_sweep(spec, tmp_path, Fake(interrupt_at=9))
    saved = json.loads((tmp_path / SWEEP_FILE).read_text())
    assert saved["state"] == "interrupted"
    spec2, previous, old = load_sweep(tmp_path)
    assert spec2.to_dict() == spec.to_dict()
    assert sum(len(v) for v in previous.values()) == 9
    again = Fake()
    reused: list[bool] = []
    doc = await run_sweep(
        spec2, tmp_path, again, previous, old["created"], lambda t, s, r: reused.append(r)
    )
    assert reused.count(True) == 9 and len(again.calls) == reused.count(False)
    fresh = await run_sweep(make_spec(), tmp_path / "fresh", Fake())
    assert [t["steps"] for t in doc["targets"]] == [t["steps"] for t in fresh["targets"]]
    assert doc["created"] == saved["created"]


def test_load_sweep_rejects_other_directories(tmp_path: Path) -> None:
    with pytest.raises(PlanError, match="not a sweep directory"):
        load_sweep(tmp_path)
    (tmp_path / SWEEP_FILE).write_text('{"format": "other"}')
    with pytest.raises(PlanError, match="not a volley sweep file"):
        load_sweep(tmp_path)


def _spec_args(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        k: None
        for k in (
            "file",
            "target",
            "model",
            "model_version",
            "input_",
            "shape",
            "slo",
            "arrival",
            "max_in_flight",
            "timeout",
            "seed",
            "name",
            "mode",
            "start",
            "growth",
            "tolerance",
            "max_steps",
            "max_load",
            "step_duration",
            "warmup",
            "min_throughput_ratio",
            "min_requests",
            "retries",
            "production_rate",
            "headroom",
            "gpus_per_replica",
            "cpus_per_replica",
            "cost_per_hour",
            "scale_check_target",
            "agent",
            "local_agents",
            "workers",
            "raw",
            "start_lead",
        )
    }
    base["scale_check_replicas"] = 2
    base.update(kw)
    return base


def test_sweep_yaml(tmp_path: Path) -> None:
    f = tmp_path / "sweep.yaml"
    f.write_text(
        """
name: sleep-configs
plan:
  model: sleep
  inputs: [{name: DELAY_MS, source: constant, value: 20}]
  slos: ["p99<100ms"]
  load: {arrival: poisson}
sweep: {start: 20, growth: 1.5, tolerance: 5%, step_duration: 3s, warmup: 1s, max_steps: 9}
targets:
  - {name: one, target: "127.0.0.1:9001", cost_per_hour: 0.5, cpus_per_replica: 1}
  - {name: batched, target: "127.0.0.1:9002", cost_per_hour: 0.9}
capacity: {production_rate: 3000, headroom: 25%, cpus_per_replica: 2}
scale_check: {target: "127.0.0.1:9003", replicas: 2}
"""
    )
    spec = build_spec(**_spec_args(file=f, seed=5, cost_per_hour=["batched=1.5"]))
    assert spec.name == "sleep-configs" and spec.plan.model == "sleep" and spec.plan.seed == 5
    assert spec.plan.load.arrival == "poisson" and spec.plan.slos == ("p99<100ms",)
    assert spec.settings.start == 20 and spec.settings.tolerance == pytest.approx(0.05)
    assert spec.settings.step_duration_s == 3 and spec.settings.max_steps == 9
    assert [(t.name, t.address, t.cost_per_hour) for t in spec.targets] == [
        ("one", "127.0.0.1:9001", 0.5),
        ("batched", "127.0.0.1:9002", 1.5),
        ("one-x2", "127.0.0.1:9003", 0.5),
    ]
    assert spec.targets[2].scale_of == "one" and spec.targets[2].replicas == 2
    assert spec.capacity == CapacityInputs(3000, 0.25, 0.0, 2.0, None)
    # command-line options win over the file
    spec2 = build_spec(**_spec_args(file=f, start=30.0, target=["x=127.0.0.1:7"]))
    assert spec2.settings.start == 30 and [t.name for t in spec2.targets] == ["x", "x-x2"]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "m", "--rate", "5"], "No such option"),
        (["--model", "m"], "--target"),
        (["--target", "nonsense", "--model", "m"], "HOST:PORT"),
        (["--target", "127.0.0.1:1", "--model", "m", "--tolerance", "abc"], "--tolerance"),
        (["--target", "127.0.0.1:1", "--model", "m", "--growth", "1"], "--growth"),
        (["--target", "127.0.0.1:1", "--model", "m", "--headroom", "30%"], "--production-rate"),
        (["--target", "127.0.0.1:1", "--model", "m", "--mode", "concurrency"], "latency SLO"),
        (["--target", "127.0.0.1:1", "--model", "m", "--mode", "bogus"], "--mode"),
        (["--target", "127.0.0.1:1", "--model", "m", "--cost-per-hour", "x=1"], "no target"),
        (["--target", "127.0.0.1:1", "--model", "m", "--slo", "p99 under 5"], "SLO"),
        (["--target", "a=127.0.0.1:1", "--target", "a=127.0.0.1:2", "--model", "m"], "twice"),
        (
            ["--target", "127.0.0.1:1", "--model", "m", "--production-rate", "-5"],
            "--production-rate",
        ),
        (["--target", "127.0.0.1:1", "--model", "m", "--arrival", "trace"], "arrival"),
        (["--resume", "/nonexistent-sweep-dir"], "not a sweep directory"),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["sweep", *args, "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert needle in res.output, res.output
    assert "Traceback" not in res.output
    if needle != "No such option":
        assert res.output.strip().count("\n") == 0, res.output
    assert not list(tmp_path.iterdir())  # nothing was started


def test_cli_resume_refuses_new_definitions(tmp_path: Path) -> None:
    (tmp_path / SWEEP_FILE).write_text("{}")
    res = CliRunner().invoke(app, ["sweep", "--resume", str(tmp_path), "--start", "5"])
    assert res.exit_code == 2 and "drop --start" in res.output


def test_cli_resume_of_a_binary_sweep_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / SWEEP_FILE).write_bytes(b"\xff\xfe\x00garbage\x80")
    res = CliRunner().invoke(app, ["sweep", "--resume", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "not UTF-8" in res.output and "Traceback" not in res.output, res.output
    assert res.output.strip().count("\n") == 0, res.output
