"""Distributions of input sizes: text syntax, mappings, sampling by inverse CDF."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from volley.dist import (
    Dist,
    DistError,
    canonical,
    parse_bytes,
    parse_dims_pattern,
    parse_dist,
    parse_shapes,
    parse_weighted_shape,
)


def test_text_forms() -> None:
    assert parse_dist("224") == Dist.fixed(224)
    assert parse_dist(224) == Dist.fixed(224)
    u = parse_dist("200..800")
    assert (u.kind, u.a, u.b, u.integer) == ("uniform", 200, 800, True)
    r = parse_dist("0.5..2")
    assert (r.kind, r.integer) == ("uniform", False)
    c = parse_dist("1:5|4:3|8:2")
    assert c.kind == "choice" and c.values == (1, 4, 8) and c.weights == (5, 3, 2)
    assert parse_dist("1|4|8").weights == (1, 1, 1)
    n = parse_dist("lognormal(200, 1, min=1, max=4096)")
    assert (n.kind, n.a, n.b, n.lo, n.hi) == ("lognormal", 200, 1, 1, 4096)
    assert parse_dist("50k..2M").b == 2_000_000
    assert parse_dist("uniform(1, 5)").integer


def test_mapping_forms() -> None:
    assert canonical({"uniform": [200, 800]}) == "200..800"
    assert canonical({"uniform": [0.5, 2.0]}) == "0.5..2.0"
    assert canonical({"choice": {1: 5, 4: 3}}) == "1:5|4:3"
    assert canonical({"choice": [1, 4], "weights": [1, 3]}) == "1:1|4:3"
    assert canonical({"normal": [500, 100], "max": 900}) == "normal(500,100,max=900)"
    assert canonical({"fixed": 3}) == "3"


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "abc",
        "800..200",
        "1:-1|2:1",
        "0:0|1:0",
        "normal(1)",
        "normal(1, 0)",
        "lognormal(-1, 1)",
        "normal(0,1,foo=2)",
        "normal(0,1,min=5,max=4)",
        "normal(0, 1, min=100)",
        {"uniform": [1]},
        {"uniform": [1, 2], "choice": [1]},
        {"weights": [1]},
        True,
        float("inf"),
    ],
)
def test_errors(bad: object) -> None:
    with pytest.raises(DistError):
        parse_dist(bad)


def test_quantiles() -> None:
    u = parse_dist("1..4")
    assert [u.quantile(x) for x in (0.0, 0.24, 0.25, 0.99)] == [1, 1, 2, 4]
    c = parse_dist("10:1|20:3")
    assert c.quantile(0.2) == 10 and c.quantile(0.3) == 20
    assert c.support() == [(10, 0.25), (20, 0.75)]
    n = parse_dist("normal(100, 10, min=95, max=130)")
    assert n.quantile(0.0) >= 95 and n.quantile(0.9999) <= 130
    ln = parse_dist("lognormal(200, 0.5)")
    assert abs(ln.quantile(0.5) - 200) < 1e-6
    assert ln.max() == math.inf and ln.min() == 0


_dists = st.one_of(
    st.integers(0, 10**6).map(lambda v: Dist.fixed(v)),
    st.tuples(st.integers(0, 1000), st.integers(0, 1000)).map(
        lambda t: Dist("uniform", min(t), max(t), integer=True)
    ),
    st.tuples(st.floats(0.01, 100), st.floats(0.01, 100)).map(
        lambda t: Dist("uniform", min(t), max(t))
    ),
    st.lists(st.tuples(st.integers(0, 10**5), st.floats(0.01, 100)), min_size=1, max_size=6).map(
        lambda vs: Dist(
            "choice", values=tuple(float(v) for v, _ in vs), weights=tuple(w for _, w in vs)
        )
    ),
    st.tuples(st.floats(1, 1000), st.floats(0.1, 2)).map(
        lambda t: Dist("lognormal", t[0], t[1], lo=1.0, hi=t[0] * 20)
    ),
    st.tuples(st.floats(-100, 100), st.floats(0.1, 50)).map(lambda t: Dist("normal", t[0], t[1])),
)


@settings(max_examples=200, deadline=None)
@given(_dists, st.floats(0, 1, exclude_max=True), st.floats(0, 1, exclude_max=True))
def test_text_round_trip_and_quantile_bounds(d: Dist, u1: float, u2: float) -> None:
    again = parse_dist(str(d))
    assert str(again) == str(d)
    for u in (u1, u2):
        assert again.quantile(u) == d.quantile(u)
        assert d.min() - 1e-9 <= d.quantile(u) <= d.max() + 1e-9
    lo, hi = sorted((u1, u2))
    assert d.quantile(lo) <= d.quantile(hi) + 1e-9  # monotone


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.1, 10), min_size=1, max_size=5), st.integers(1, 400))
def test_stratified_quantiles_give_exact_shares(weights: list[float], n: int) -> None:
    d = Dist("choice", values=tuple(float(i) for i in range(len(weights))), weights=tuple(weights))
    draws = [d.quantile((k + 0.5) / n) for k in range(n)]
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(draws.count(float(i)) - n * w / total) <= 1.0 + 1e-9


def test_shapes_and_dims() -> None:
    assert parse_dims_pattern("200..800x200..800x3") == ["200..800", "200..800", "3"]
    assert parse_dims_pattern("normal(500,50,max=900)x3") == ["normal(500,50,max=900)", "3"]
    with pytest.raises(DistError):
        parse_dims_pattern("224xx3")
    ws = parse_weighted_shape("224x224x3:2")
    assert ws.shape == (224, 224, 3) and ws.weight == 2 and str(ws) == "224x224x3:2"
    assert parse_weighted_shape({"shape": [1, 2], "weight": 3}).weight == 3
    assert str(parse_weighted_shape([5, 6])) == "5x6"
    with pytest.raises(DistError):
        parse_shapes(["224x224x3", "224x224"])
    with pytest.raises(DistError):
        parse_weighted_shape("224x-1")


def test_bytes() -> None:
    assert parse_bytes("256MB") == 256_000_000
    assert parse_bytes("256MiB") == 256 * 2**20
    assert parse_bytes(4096) == 4096
    with pytest.raises(DistError):
        parse_bytes("lots")
