"""How often an agent's run session speaks: timing batches and heartbeats. Pure rules,
so that their cadences are tested without clocks."""

from __future__ import annotations

from volley.liveness import MISSED_BEATS

__all__ = [
    "BATCH_HOLD_S",
    "BATCH_RECORDS",
    "IDLE_HEARTBEAT_S",
    "MAX_BATCH_RECORDS",
    "MISSED_BEATS",
    "batch_due",
    "beat_due",
    "beat_period",
    "brisk",
    "goes_with_beat",
]

#: While the workers' figures do not move, the heartbeat (a status to the coordinator,
#: the watchdog's look) comes this often, else every `heartbeat_s`. The coordinator calls
#: an agent missing after MISSED_BEATS idle beats of silence at least (`volley.liveness`;
#: its limit, 2.5 s, is at least that): an idle agent must miss two whole beats and most
#: of a third, a 1.7 s stall, before it is called missing. Each beat is idle cost, so one
#: rides on a timing batch when it can (`beat_due`), and its timer counts from the last.
IDLE_HEARTBEAT_S = 0.8


#: A timing batch leaves the agent once its oldest record has waited `flush_s` and it
#: holds BATCH_RECORDS records, or once that record has waited BATCH_HOLD_S, whichever is
#: first (or at once past MAX_BATCH_RECORDS): the coordinator pays ~1-2 ms per batch
#: whatever its size, so a fast run sends fewer, bigger batches. The hold bounds what a
#: killed agent loses (records not yet sent) and how late the live view is: 0.25 s. A
#: record arriving a hold or more after the last batch left goes at once (`batch_due`).
BATCH_RECORDS = 256
BATCH_HOLD_S = 0.25
MAX_BATCH_RECORDS = 65536


def batch_due(age_s: float, records: int, flush_s: float, since_last_s: float = 0.0) -> bool:
    """The pending records (the oldest `age_s` old) go to the coordinator now. The last
    batch left `since_last_s` ago: past BATCH_HOLD_S, holding these gathers nothing (a
    slow run), so they go at once, in the wake-up that brought them."""
    if records > MAX_BATCH_RECORDS:
        return True
    if records == 0:
        return False
    if since_last_s >= BATCH_HOLD_S:
        return True
    return age_s >= max(BATCH_HOLD_S, flush_s) or (age_s >= flush_s and records >= BATCH_RECORDS)


def brisk(sent: int, elapsed_s: float, heartbeat_s: float) -> bool:
    """`sent` requests went out over the last `elapsed_s`: at least one per heartbeat, so
    that a status every heartbeat carries news. Slower (1 req/s), a status a second
    says as much for a quarter of the wake-ups."""
    return sent > 0 and sent * heartbeat_s >= elapsed_s


def beat_due(since_beat_s: float, beat_s: float, heartbeat_s: float, batch: bool) -> bool:
    """The heartbeat goes now, `since_beat_s` after the last one: its period `beat_s` is
    up, or a timing batch leaves now (`batch`) and at least a (fast) heartbeat has passed,
    so that the status rides on the batch, one message instead of two, and the next beat
    is due a period after it (at 1 req/s, one message a second)."""
    return since_beat_s >= beat_s or (batch and since_beat_s >= heartbeat_s)


def goes_with_beat(records: int, since_beat_s: float, beat_s: float) -> bool:
    """The heartbeat falls due with `records` pending: they leave now, with it, so that
    a fast run's batches and beats (both every 0.25 s) stay in step, one message each
    time instead of two out of phase. Never later than `batch_due` would send them."""
    return records > 0 and since_beat_s >= beat_s


def beat_period(moved: bool, heartbeat_s: float) -> float:
    """The time to the next heartbeat (a status event, the watchdog's look): a heartbeat
    while the figures move, IDLE_HEARTBEAT_S (at least a heartbeat) while they do not."""
    return heartbeat_s if moved else max(IDLE_HEARTBEAT_S, heartbeat_s)
