"""Columnar timing records: the one format agents ship and the coordinator ingests.

A `RecordBlock` is a set of equal-length numpy arrays (one per column). It maps
to `volley.v1.TimingBatch` (packed little-endian bytes per column) without any
per-record Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from volley.v1 import control_pb2 as pb

# volley status codes (uint16). 0..16 mirror gRPC status codes.
OK = 0
CANCELLED = 1
UNKNOWN = 2
INVALID_ARGUMENT = 3
DEADLINE_EXCEEDED = 4
NOT_FOUND = 5
ALREADY_EXISTS = 6
PERMISSION_DENIED = 7
RESOURCE_EXHAUSTED = 8
FAILED_PRECONDITION = 9
ABORTED = 10
OUT_OF_RANGE = 11
UNIMPLEMENTED = 12
INTERNAL = 13
UNAVAILABLE = 14
DATA_LOSS = 15
UNAUTHENTICATED = 16
#: volley's own codes, above gRPC's range.
DROPPED = 100  #: never sent: the in-flight cap and backlog were full
BAD_RESPONSE = 101  #: the server answered, but the response failed our check
NOT_SENT = 102  #: the run stopped before this arrival's time came
LIMITED = 103  #: never sent: refused by the agent's rate limit (--max-rate, at send time)
#: a sequence step whose response differs from the state the sequence should have
#: (`sequence.check`: the output is not the running sum of the input)
SEQ_MISMATCH = 110
#: never sent: a sequence's start found no free live-sequence slot (`sequence.max_live`)
SEQ_NO_SLOT = 111
#: a streaming request answered with an error after at least one response with data
STREAM_ERROR = 104
#: a streaming request whose stream ended (or its final flag never came) before its end
STREAM_CUT = 105
HTTP_ERROR_BASE = 1000  #: HTTP status s is recorded as 1000 + s

STATUS_NAMES: dict[int, str] = {
    OK: "OK",
    CANCELLED: "CANCELLED",
    UNKNOWN: "UNKNOWN",
    INVALID_ARGUMENT: "INVALID_ARGUMENT",
    DEADLINE_EXCEEDED: "DEADLINE_EXCEEDED",
    NOT_FOUND: "NOT_FOUND",
    ALREADY_EXISTS: "ALREADY_EXISTS",
    PERMISSION_DENIED: "PERMISSION_DENIED",
    RESOURCE_EXHAUSTED: "RESOURCE_EXHAUSTED",
    FAILED_PRECONDITION: "FAILED_PRECONDITION",
    ABORTED: "ABORTED",
    OUT_OF_RANGE: "OUT_OF_RANGE",
    UNIMPLEMENTED: "UNIMPLEMENTED",
    INTERNAL: "INTERNAL",
    UNAVAILABLE: "UNAVAILABLE",
    DATA_LOSS: "DATA_LOSS",
    UNAUTHENTICATED: "UNAUTHENTICATED",
    DROPPED: "DROPPED",
    BAD_RESPONSE: "BAD_RESPONSE",
    NOT_SENT: "NOT_SENT",
    LIMITED: "LIMITED",
    SEQ_MISMATCH: "SEQ_MISMATCH",
    SEQ_NO_SLOT: "SEQ_NO_SLOT",
    STREAM_ERROR: "STREAM_ERROR",
    STREAM_CUT: "STREAM_CUT",
}


def _known_codes() -> npt.NDArray[np.bool_]:
    table = np.zeros(1 << 16, np.bool_)
    table[list(STATUS_NAMES)] = True
    table[HTTP_ERROR_BASE + 1 : HTTP_ERROR_BASE + 1000] = True  # HTTP 1..999
    table.flags.writeable = False
    return table


#: uint16 code -> whether it is one of ours (STATUS_NAMES, or HTTP_ERROR_BASE + an HTTP status).
_KNOWN_CODES = _known_codes()


#: Codes of arrivals that were never sent (their record has sent = done = -1).
NEVER_SENT = (DROPPED, NOT_SENT, LIMITED, SEQ_NO_SLOT)

#: `seq_flags` bits of a sequence step's record.
SEQ_FIRST = 1  #: the sequence's first step (sent with START)
SEQ_LAST = 2  #: its planned last step (sent with END)
SEQ_FAILED = 4  #: this step failed and ended the sequence early
SEQ_CLEANUP = 8  #: the END volley sent at once for a sequence whose step failed
SEQ_CUT = 16  #: the END volley sent for a sequence still live when the load (and drain) ended


def known_status(status: npt.NDArray[np.uint16]) -> npt.NDArray[np.bool_]:
    """Which of these codes (a `status` column, uint16) are volley status codes."""
    known: npt.NDArray[np.bool_] = _KNOWN_CODES[status]
    return known


def _never_sent_codes() -> npt.NDArray[np.bool_]:
    table = np.zeros(1 << 16, np.bool_)
    table[list(NEVER_SENT)] = True
    table.flags.writeable = False
    return table


#: uint16 code -> whether it is one of NEVER_SENT.
_NEVER_SENT_CODES = _never_sent_codes()


def never_sent(status: npt.NDArray[np.uint16]) -> npt.NDArray[np.bool_]:
    """Which of these codes (a `status` column, uint16) are NEVER_SENT's: one table look-up
    a record, where np.isin sorts (~3x the cost on a batch)."""
    out: npt.NDArray[np.bool_] = _NEVER_SENT_CODES[status]
    return out


def status_name(code: int) -> str:
    if code >= HTTP_ERROR_BASE:
        return f"HTTP_{code - HTTP_ERROR_BASE}"
    return STATUS_NAMES.get(code, f"STATUS_{code}")


#: Column name -> dtype (little-endian). The order is the wire and file order.
COLUMNS: dict[str, np.dtype[np.generic]] = {
    "index": np.dtype("<i8"),
    "intended_ns": np.dtype("<i8"),
    "sent_ns": np.dtype("<i8"),
    "done_ns": np.dtype("<i8"),
    "status": np.dtype("<u2"),
    "worker": np.dtype("<u2"),
    "req_bytes": np.dtype("<u4"),
    "resp_bytes": np.dtype("<u4"),
    "batch_size": np.dtype("<u2"),
    "shape_id": np.dtype("<u2"),
    "model_id": np.dtype("<u2"),
    "seq_id": np.dtype("<u8"),
    "seq_step": np.dtype("<u2"),
    "seq_flags": np.dtype("<u1"),
    # streaming (decoupled) requests; a unary record has -1, -1, 0, 0
    "first_ns": np.dtype("<i8"),
    "last_ns": np.dtype("<i8"),
    "responses": np.dtype("<u4"),
    "tokens": np.dtype("<u4"),
}
#: What a record that is not a streaming one holds in the streaming columns.
STREAM_DEFAULTS: dict[str, int] = {"first_ns": -1, "last_ns": -1, "responses": 0, "tokens": 0}
GAP_DTYPE = np.dtype("<i8")
_NO_GAPS: npt.NDArray[np.int64] = np.empty(0, GAP_DTYPE)


def gap_counts(responses: npt.NDArray[np.generic]) -> npt.NDArray[np.int64]:
    """Gaps each record owns in the ragged `gaps` column: max(responses - 1, 0)."""
    out: npt.NDArray[np.int64] = np.maximum(responses.astype(np.int64) - 1, 0)
    return out


def gap_mask(
    responses: npt.NDArray[np.generic], keep: npt.NDArray[np.bool_]
) -> npt.NDArray[np.bool_]:
    """The gaps of the records `keep` selects (a mask over the ragged column)."""
    out: npt.NDArray[np.bool_] = np.repeat(keep, gap_counts(responses))
    return out


@dataclass
class RecordBlock:
    """Equal-length columns of timing records (see COLUMNS), and the ragged `gaps`
    column of streaming records (`gap_counts(responses)` per record, in their order; may
    be empty where it was not kept, e.g. a block read back from requests.parquet)."""

    columns: dict[str, npt.NDArray[np.generic]]
    input_shapes: list[str]
    gaps: npt.NDArray[np.int64] = field(default_factory=lambda: _NO_GAPS)

    def gaps_complete(self) -> bool:
        """Whether `gaps` holds exactly the gaps the `responses` column implies."""
        resp = self.columns.get("responses")
        want = 0 if resp is None else int(gap_counts(resp).sum())
        return int(self.gaps.size) == want

    def select(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> RecordBlock:
        """The records `keep` selects (a mask), with their gaps."""
        gaps = self.gaps
        if gaps.size and keep.dtype != np.bool_:
            # indices: their gaps are kept when they select each record at most once, in order
            if keep.size > 1 and not bool((keep[1:] > keep[:-1]).all()):
                gaps = _NO_GAPS
            else:
                mask = np.zeros(len(self), np.bool_)
                mask[keep] = True
                keep = mask
        if gaps.size and self.gaps_complete():
            gaps = gaps[gap_mask(self.columns["responses"], keep)]  # type: ignore[arg-type]
        elif gaps.size:
            gaps = _NO_GAPS
        return RecordBlock({k: v[keep] for k, v in self.columns.items()}, self.input_shapes, gaps)

    def __len__(self) -> int:
        return int(self.columns["index"].shape[0])

    @classmethod
    def empty(cls) -> RecordBlock:
        return cls({k: np.empty(0, dt) for k, dt in COLUMNS.items()}, [])

    def col(self, name: str) -> npt.NDArray[np.int64]:
        return self.columns[name]  # type: ignore[return-value]

    def to_proto(self) -> pb.TimingBatch:
        msg = pb.TimingBatch(count=len(self), input_shapes=self.input_shapes)
        for name, dt in COLUMNS.items():
            getattr(msg, name)  # field exists
            setattr(msg, name, np.ascontiguousarray(self.columns[name], dtype=dt).tobytes())
        if self.gaps.size:
            msg.gaps_ns = np.ascontiguousarray(self.gaps, dtype=GAP_DTYPE).tobytes()
        return msg

    @classmethod
    def from_proto(cls, msg: pb.TimingBatch) -> RecordBlock:
        n = int(msg.count)
        cols: dict[str, npt.NDArray[np.generic]] = {}
        for name, dt in COLUMNS.items():
            raw: bytes = getattr(msg, name)
            if len(raw) != n * dt.itemsize:
                raise ValueError(f"timing batch column {name}: {len(raw)} bytes for {n} records")
            cols[name] = np.frombuffer(raw, dtype=dt)
        raw_gaps: bytes = msg.gaps_ns
        if len(raw_gaps) % GAP_DTYPE.itemsize:
            raise ValueError(f"timing batch gaps: {len(raw_gaps)} bytes")
        gaps: npt.NDArray[np.int64] = np.frombuffer(raw_gaps, dtype=GAP_DTYPE)
        return cls(cols, list(msg.input_shapes), gaps)


class RecordBuffer:
    """Preallocated columns a worker appends to; `take()` hands over what is filled.

    One `append` per completed request writes scalars into numpy arrays: no
    per-record Python objects survive the call.
    """

    def __init__(self, capacity: int = 8192) -> None:
        self.capacity = capacity
        self._cols = {k: np.empty(capacity, dt) for k, dt in COLUMNS.items()}
        self._index = self._cols["index"]
        self._intended = self._cols["intended_ns"]
        self._sent = self._cols["sent_ns"]
        self._done = self._cols["done_ns"]
        self._status = self._cols["status"]
        self._req = self._cols["req_bytes"]
        self._resp = self._cols["resp_bytes"]
        self._batch = self._cols["batch_size"]
        self._shape = self._cols["shape_id"]
        self._model = self._cols["model_id"]
        self._cols["worker"].fill(0)
        #: sequence columns: zero unless `append_seq` writes them
        self._seq_id = self._cols["seq_id"]
        self._seq_step = self._cols["seq_step"]
        self._seq_flags = self._cols["seq_flags"]
        for k in ("seq_id", "seq_step", "seq_flags"):
            self._cols[k].fill(0)
        for k, v in STREAM_DEFAULTS.items():
            self._cols[k].fill(v)
        self._gaps: list[int] = []
        self.n = 0
        self.worker = 0

    def note_stream(
        self, first: int, last: int, responses: int, tokens: int, gaps: list[int]
    ) -> None:
        """The streaming figures of the record appended next (a transport calls this
        just before it completes a streaming request). `gaps`: max(responses - 1, 0)."""
        n = self.n
        self._cols["first_ns"][n] = first
        self._cols["last_ns"][n] = last
        self._cols["responses"][n] = responses
        self._cols["tokens"][n] = tokens
        if gaps:
            self._gaps.extend(gaps)

    def append(
        self,
        index: int,
        intended: int,
        sent: int,
        done: int,
        status: int,
        req_bytes: int,
        resp_bytes: int,
        batch_size: int,
        shape_id: int,
        model_id: int = 0,
    ) -> bool:
        """Append one record; returns True when the buffer is full and must be taken."""
        n = self.n
        self._index[n] = index
        self._intended[n] = intended
        self._sent[n] = sent
        self._done[n] = done
        self._status[n] = status
        self._req[n] = req_bytes
        self._resp[n] = resp_bytes
        self._batch[n] = batch_size
        self._shape[n] = shape_id
        self._model[n] = model_id
        self.n = n + 1
        return self.n >= self.capacity

    def append_seq(
        self,
        seq_id: int,
        step: int,
        flags: int,
        index: int,
        intended: int,
        sent: int,
        done: int,
        status: int,
        req_bytes: int,
        resp_bytes: int,
        batch_size: int,
        shape_id: int,
        model_id: int = 0,
    ) -> bool:
        """A sequence step's record: `append` plus its sequence ID, step and flags."""
        # `append`'s body again, on purpose: calling `append` from here measured 40-135 ns
        # (5-15%) more per record (timeit, interleaved, CPython 3.11, 2-core host, s4).
        n = self.n
        self._seq_id[n] = seq_id
        self._seq_step[n] = step
        self._seq_flags[n] = flags
        self._index[n] = index
        self._intended[n] = intended
        self._sent[n] = sent
        self._done[n] = done
        self._status[n] = status
        self._req[n] = req_bytes
        self._resp[n] = resp_bytes
        self._batch[n] = batch_size
        self._shape[n] = shape_id
        self._model[n] = model_id
        self.n = n + 1
        return self.n >= self.capacity

    def take(self, input_shapes: list[str]) -> RecordBlock | None:
        if self.n == 0:
            return None
        n = self.n
        cols = {k: v[:n].copy() for k, v in self._cols.items()}
        cols["worker"].fill(self.worker)
        gaps = _NO_GAPS
        if self._gaps:
            gaps = np.array(self._gaps, GAP_DTYPE)
            self._gaps = []
        if self._cols["responses"][:n].any():
            for k, v in STREAM_DEFAULTS.items():
                self._cols[k][:n] = v
        self.n = 0
        return RecordBlock(cols, input_shapes, gaps)


def concat(blocks: list[RecordBlock]) -> RecordBlock:
    """Concatenate blocks; shape ids are remapped onto one merged shape table."""
    if not blocks:
        return RecordBlock.empty()
    shapes: list[str] = []
    lookup: dict[str, int] = {}
    parts: dict[str, list[npt.NDArray[np.generic]]] = {k: [] for k in COLUMNS}
    whole = all(b.gaps_complete() for b in blocks)
    gaps = [b.gaps for b in blocks if b.gaps.size] if whole else []
    for b in blocks:
        remap = np.empty(max(len(b.input_shapes), 1), np.uint16)
        for i, s in enumerate(b.input_shapes):
            if s not in lookup:
                lookup[s] = len(shapes)
                shapes.append(s)
            remap[i] = lookup[s]
        for k in COLUMNS:
            col = b.columns[k]
            if k == "shape_id" and b.input_shapes and len(col):
                col = remap[col.astype(np.intp)]
            parts[k].append(col)
    return RecordBlock(
        {k: np.concatenate(v).astype(COLUMNS[k]) for k, v in parts.items()},
        shapes,
        np.concatenate(gaps).astype(GAP_DTYPE) if gaps else _NO_GAPS,
    )
