"""The agent's watchdog with a fake clock: the coordinator's silence is counted over the
agent's own running time only, so a paused agent (SIGSTOP, then SIGCONT) carries on,
while a coordinator that really went silent still stops the run after the grace period.
No process is started and nothing sleeps."""

from __future__ import annotations

import pytest

from agent.session import IDLE_HEARTBEAT_S, RunSession, SessionSpec
from volley.liveness import SilenceClock
from volley.plan import plan_from_dict

GRACE_S = 2.0
T0 = 1000.0


def _session(keepalive_s: float = 0.5, start_at_ns: int = 1) -> RunSession:
    plan = plan_from_dict(
        {
            "target": "127.0.0.1:8001",
            "model": "add",
            "load": {"mode": "open", "rate": 10, "duration": "60s"},
        }
    )
    spec = SessionSpec(
        run_id="r1",
        plan=plan,
        plan_json=plan.to_json(),
        agent_index=0,
        start_at_ns=start_at_ns,  # 0: prepared first, its Start not come yet
        workers=1,
        expected_outputs=1,
        keepalive_s=keepalive_s,
        grace_s=GRACE_S,
    )
    return RunSession(spec)


def _beats(
    session: RunSession, start: float, end: float, touch_every: float | None = 0.5
) -> float | None:
    """Watchdog checks every heartbeat (0.25 s) from start to end, a keepalive arriving
    every `touch_every` s (None: none); the instant the watchdog stopped the run, if it did."""
    steps = round((end - start) / 0.25)
    for k in range(steps + 1):
        now = start + k * 0.25
        if touch_every is not None and round(k * 0.25 / touch_every, 6).is_integer():
            session.last_contact = now - 0.01  # a ping arrived just before the check
        session._watchdog(now)
        if session.stop_reason:
            return now
    return None


def test_keepalives_keep_the_run_going() -> None:
    s = _session()
    s.last_contact = T0
    assert _beats(s, T0, T0 + 20) is None


def test_real_coordinator_silence_stops_after_the_grace() -> None:
    s = _session()
    assert _beats(s, T0, T0 + 10) is None
    # pings stop at T0 + 10 (last one just before); checks go on every 0.25 s
    stopped = _beats(s, T0 + 10.25, T0 + 20, touch_every=None)
    assert stopped == T0 + 12.0  # silent 2.01 s > 2 s
    assert s.stop_reason.startswith("coordinator gone (no keepalive for 2.0")


def test_own_pause_is_not_the_coordinators_silence() -> None:
    """Stopped 4 s (twice the grace): at the first check after it resumes, before the
    keepalives queued in its socket are read, the agent does not stop."""
    s = _session()
    assert _beats(s, T0, T0 + 10) is None
    s._watchdog(T0 + 14.0)  # resumed: no ping read yet
    assert not s.stop_reason
    assert _beats(s, T0 + 14.25, T0 + 30) is None  # the pings flow again


def test_own_pause_then_real_silence_stops_after_the_grace_of_running_time() -> None:
    s = _session()
    assert _beats(s, T0, T0 + 10) is None  # last ping at T0 + 9.99
    # paused 10 s; after it, no ping ever comes: 0.01 s + 1.0 s of the gap (an idle
    # agent's heartbeat is IDLE_HEARTBEAT_S (0.8 s) apart: a gap up to a quarter more is
    # its running time) + 1.0 s after
    assert s.silence.max_gap == pytest.approx(1.25 * IDLE_HEARTBEAT_S) == pytest.approx(1.0)
    stopped = _beats(s, T0 + 20.0, T0 + 30, touch_every=None)
    assert stopped == T0 + 21.0
    assert "coordinator gone" in s.stop_reason


def test_a_coordinator_that_does_not_ping_is_judged_by_the_stream() -> None:
    s = _session(keepalive_s=0.0)
    assert _beats(s, T0, T0 + 10, touch_every=None) is None  # attached: fine
    s.detach("the Run stream closed")
    s.detached_at = T0 + 10.0
    s._watchdog(T0 + 15.0)  # paused right after: not counted
    assert not s.stop_reason
    assert _beats(s, T0 + 15.25, T0 + 20, touch_every=None) == T0 + 16.25  # 1.0 s of the gap
    assert s.stop_reason.startswith("coordinator gone (the Run stream closed 2.")


@pytest.mark.parametrize("gap", [0.25, 0.5, 3.0, 100.0])
def test_silence_clock_credits_at_most_the_max_gap(gap: float) -> None:
    watch = SilenceClock(max_gap=0.5)
    assert watch.check(T0, T0) == 0.0
    assert watch.check(T0 + gap, T0) == pytest.approx(min(gap, 0.5))
    # heard during the gap: only the part within the credit counts
    assert watch.check(T0 + gap + 10, T0 + gap + 1) == pytest.approx(0.5)


def test_before_its_start_a_prepared_session_waits_longer_for_a_silent_coordinator() -> None:
    """While the agents prepare (a host spawning many workers starves the coordinator's
    keepalives) nothing is sent yet: the grace is PREPARE_GRACE_S, then the usual one."""
    from agent.session import PREPARE_GRACE_S

    s = _session(start_at_ns=0)
    assert _beats(s, T0, T0 + 2) is None
    stopped = _beats(s, T0 + 2.25, T0 + 40, touch_every=None)
    assert stopped is not None and stopped - T0 == pytest.approx(2 + PREPARE_GRACE_S, abs=0.3)
    late = _session(start_at_ns=0)
    assert _beats(late, T0, T0 + 2) is None
    late.set_start(10**18)  # the Start came: back to the run's grace
    assert _beats(late, T0 + 2.25, T0 + 10, touch_every=None) == T0 + 4.0
