"""A busy generator host is named as the bottleneck, not its agents' worker counts; with
many agents the verdict groups them (coordinator/bottleneck.py, agent/hostcpu.py)."""

from __future__ import annotations

from agent.hostcpu import HostCpu, parse_proc_stat, read_proc_stat
from coordinator.aggregate import Aggregator
from coordinator.bottleneck import MAX_LISTED
from coordinator.summary import AgentInfo, build_summary
from volley import records as rc
from volley.plan import Plan, plan_from_dict
from volley.records import RecordBuffer

MS = 1_000_000
RATE = 100  # per agent, constant
SPAN_S = 2


def _plan(agents: int, target: str = "grpc://127.0.0.1:8001") -> Plan:
    return plan_from_dict(
        {
            "target": target,
            "model": "m",
            "load": {"rate": RATE * agents, "duration": f"{SPAN_S}s"},
            "validity": {"min_duration_s": 1, "min_requests": 10},
        }
    )


def _summary(
    agents: int, late_ms: float, host_busy: list[float], target: str = "grpc://127.0.0.1:8001"
) -> dict[str, object]:
    """`agents` agents on one host, one worker each, every send `late_ms` after its time
    (agent k's lateness grows with k, so the worst is the last), the host's statuses
    saying `host_busy` %."""
    plan = _plan(agents, target)
    agg = Aggregator(agents, 0)
    infos = []
    n = RATE * SPAN_S
    for a in range(agents):
        buf = RecordBuffer(n + 1)
        for i in range(n):
            intended = i * 1_000_000_000 // RATE
            sent = intended + int((late_ms + a) * MS)
            buf.append(a * n + i, intended, sent, sent + 2 * MS, rc.OK, 100, 100, 1, 0, 0)
        block = buf.take(["1"])
        assert block is not None
        agg.ingest(a, block)
        info = AgentInfo(
            index=a,
            address=f"127.0.0.1:{a + 1}",
            id=f"local-{a}",
            host="gen1",
            workers=1,
            cores=2,
            cpu_seconds=0.2,
        )
        info.host_cpu_samples = list(host_busy)
        infos.append(info)
    s = build_summary(plan, "r", agg, infos, float(SPAN_S), None)
    return dict(s)


def test_a_busy_host_is_the_bottleneck_not_the_workers() -> None:
    s = _summary(1, late_ms=20.0, host_busy=[96.0, 98.0, 97.0])
    (row,) = s["agents"]  # type: ignore[misc]
    assert row["saturated"] and row["bottleneck"] == "host"
    assert row["host_cpu_percent_avg"] == 97.0 and row["host_cpu_percent_peak"] == 98.0
    (reason,) = s["verdict"]["reasons"]  # type: ignore[index]
    assert "host gen1's 2 cores were 97% busy" in reason
    assert "the server's too" in reason  # the target is on loopback: it shares the host
    assert "more worker" not in reason.replace("more workers there would not help", "")


def test_an_idle_host_leaves_it_to_the_workers() -> None:
    s = _summary(1, late_ms=20.0, host_busy=[40.0, 45.0])
    (row,) = s["agents"]  # type: ignore[misc]
    assert row["saturated"] and row["bottleneck"] == "workers"
    (reason,) = s["verdict"]["reasons"]  # type: ignore[index]
    assert "give it ~1 more worker(s)" in reason and "busy" not in reason


def test_a_host_that_never_said_is_not_blamed() -> None:
    s = _summary(1, late_ms=20.0, host_busy=[])
    (row,) = s["agents"]  # type: ignore[misc]
    assert row["bottleneck"] == "workers" and row["host_cpu_percent_avg"] is None


def test_a_remote_target_is_not_said_to_share_the_host() -> None:
    s = _summary(1, late_ms=20.0, host_busy=[99.0], target="grpc://10.1.2.3:8001")
    (reason,) = s["verdict"]["reasons"]  # type: ignore[index]
    assert "every process on it)" in reason and "server's" not in reason


def test_many_agents_on_a_busy_host_are_one_reason() -> None:
    s = _summary(64, late_ms=20.0, host_busy=[99.0])
    reasons = s["verdict"]["reasons"]  # type: ignore[index]
    (reason,) = reasons
    assert reason.startswith("64 agents fell behind (local-63, local-62, local-61 and 61 more")
    assert "send lateness p99 up to 8" in reason  # the last agent: 20 + 63 ms late
    assert "host gen1's 2 cores were 99% busy" in reason
    assert all(r["bottleneck"] == "host" for r in s["agents"])  # type: ignore[attr-defined]


def test_many_agents_short_of_workers_list_the_worst_and_one_line() -> None:
    s = _summary(10, late_ms=20.0, host_busy=[30.0])
    reasons = s["verdict"]["reasons"]  # type: ignore[index]
    assert len(reasons) == MAX_LISTED + 1
    assert [r.split()[1] for r in reasons[:MAX_LISTED]] == ["local-9", "local-8", "local-7"]
    assert reasons[-1].startswith("and 7 more agents were short of workers (local-6")


def test_proc_stat_busy_share() -> None:
    first = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 50 0 25 400 25 0 0 0 0 0\n"
    second = "cpu  160 0 80 820 60 0 0 0 0 0\n"  # +90 busy, +30 idle/iowait
    assert parse_proc_stat(first) == (150, 1000)
    readings = iter([parse_proc_stat(first), parse_proc_stat(second), None, (1, 1)])
    host = HostCpu(lambda: next(readings))
    assert host.sample() == 75.0
    assert host.sample() is None  # the host stopped saying
    assert host.sample() is None  # no earlier reading to compare with
    assert parse_proc_stat("intr 1 2 3\n") is None
    assert parse_proc_stat("cpu  1 x 3 4\n") is None


def test_this_host_says() -> None:
    r = read_proc_stat()
    assert r is not None and 0 <= r[0] <= r[1]


def test_which_targets_name_the_agents_own_host() -> None:
    from coordinator.bottleneck import target_is_loopback

    for t in ("127.0.0.1:8001", "grpc://127.0.0.1:8001", "http://localhost:8000/v2", "[::1]:1"):
        assert target_is_loopback(t), t
    for t in ("10.0.0.2:8001", "https://triton.example:443/v2", "[2001:db8::1]:8001"):
        assert not target_is_loopback(t), t


def test_drops_at_the_in_flight_cap_stay_the_agents_even_on_a_busy_host() -> None:
    from coordinator.aggregate import Stats
    from coordinator.summary import _behind

    plan = _plan(1)
    st = Stats()
    st.records = st.dropped = 50
    info = AgentInfo(index=0, address="a", id="t0", host="gen1", workers=1, cores=2)
    info.host_cpu_samples = [99.0]
    b = _behind(plan, st, info, span_s=2.0)
    assert b is not None and b.shortfall.value == "workers"
    assert "50 arrivals dropped at the in-flight cap" in b.reason


def test_two_machines_with_one_host_name_are_two_hosts() -> None:
    from coordinator.bottleneck import Behind, Shortfall, grouped_reasons, host_key

    assert host_key("ubuntu", "10.0.0.1:7070") != host_key("ubuntu", "10.0.0.2:7070")
    assert host_key("vm", "127.0.0.1:1") == host_key("vm", "127.0.0.1:2")
    assert host_key("vm", "[::1]:1") == "vm@::1"
    line = "host ubuntu's 2 cores were 99% busy (every process on it)"
    behind = [
        Behind(f"a{i}", Shortfall.HOST, f"agent a{i} ...", 20.0 + i, host_key("ubuntu", ip), line)
        for i, ip in enumerate(["10.0.0.1:1", "10.0.0.1:2", "10.0.0.2:1", "10.0.0.2:2"])
    ]
    reasons = grouped_reasons(behind)
    assert len(reasons) == 2 and all(r.startswith("2 agents fell behind") for r in reasons)


def test_the_host_mean_weighs_each_sample_by_the_time_it_covers() -> None:
    from coordinator.bottleneck import host_cpu

    # 0.8 s idle at 50 %, then four fast 0.25 s beats at 100 %: 1 s busy, 0.8 s half
    samples, spans = [50.0, 100.0, 100.0, 100.0, 100.0], [0.8, 0.25, 0.25, 0.25, 0.25]
    assert host_cpu(samples, spans) == (round((0.4 + 1.0) / 1.8 * 100, 1), 100.0)
    assert host_cpu(samples) == (90.0, 100.0)  # unweighted: the fast beats outvote
    assert host_cpu(samples, [0.0] * 5) == (90.0, 100.0)  # no span known: unweighted
    assert host_cpu([], []) == (None, None)
