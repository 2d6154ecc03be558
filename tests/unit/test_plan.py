from __future__ import annotations

import pytest

from volley.plan import Plan, PlanError, parse_address, parse_duration, plan_from_dict


def test_durations() -> None:
    assert parse_duration("30s") == 30.0
    assert parse_duration("500ms") == 0.5
    assert parse_duration("2m") == 120.0
    assert parse_duration(3) == 3.0
    for bad in ("abc", "-1s", "5 parsecs", True):
        with pytest.raises(PlanError):
            parse_duration(bad)


def test_addresses() -> None:
    assert parse_address("127.0.0.1:8001") == ("127.0.0.1", 8001)
    assert parse_address("[::1]:7070") == ("::1", 7070)
    for bad in ("nohost", ":80", "h:notaport", "h:70000"):
        with pytest.raises(PlanError):
            parse_address(bad)


def test_round_trip_json_and_yaml() -> None:
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "seed": 42,
            "load": {
                "mode": "open",
                "arrival": "poisson",
                "rate": 100,
                "duration": "10s",
                "warmup": "1s",
            },
            "inputs": [{"name": "INPUT0", "source": "constant", "value": 1.5}],
            "agents": [{"address": "a:1", "weight": 2}, "b:2"],
            "slos": ["p99<50ms"],
        }
    )
    assert Plan.from_json(plan.to_json()) == plan
    import yaml

    assert plan_from_dict(yaml.safe_load(plan.to_yaml())) == plan
    assert plan.agent_weights == [2, 1]


@pytest.mark.parametrize(
    ("doc", "needle"),
    [
        ({"model": "m"}, "plan.target"),
        ({"target": "h:1"}, "plan.model"),
        ({"target": "h:1", "model": "m", "load": {"rate": 0}}, "load.rate"),
        ({"target": "h:1", "model": "m", "load": {"rate": 1, "bogus": 1}}, "bogus"),
        ({"target": "h:1", "model": "m", "load": {"mode": "closed"}}, "load.concurrency"),
        ({"target": "h:1", "model": "m", "load": {"rate": 1e12}}, "hard limit"),
        (
            {"target": "h:1", "model": "m", "load": {"rate": 1, "duration": "1s", "warmup": "2s"}},
            "warmup",
        ),
        (
            {"target": "h:1", "model": "m", "load": {"rate": 1}, "inputs": [{"shape": [1]}]},
            "inputs[0].name",
        ),
        (
            {
                "target": "h:1",
                "model": "m",
                "load": {"rate": 1},
                "agents": [{"address": "a:1", "weight": 0}],
            },
            "weight",
        ),
        ([1, 2], "mapping"),
    ],
)
def test_invalid_plans_name_the_field(doc: object, needle: str) -> None:
    with pytest.raises(PlanError, match=None) as err:
        plan_from_dict(doc)
    assert needle in str(err.value)


def test_a_stream_parameter_given_twice_is_refused() -> None:
    # found by the plan fuzzer: a drawn pair and a plain parameter of one name kept both,
    # and the plan did not survive its round trip to the agents (one value each)
    doc = {
        "target": "127.0.0.1:8001",
        "model": "m",
        "load": {"rate": 1, "duration": "1s"},
        "stream": {"drawn": [["max_tokens", -1]], "parameters": {"max_tokens": 16}},
    }
    with pytest.raises(PlanError, match="'max_tokens' is given twice"):
        plan_from_dict(doc)
