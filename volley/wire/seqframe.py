"""A sequence step's gRPC request: the pre-serialized ModelInferRequest plus its
sequence parameters, framed at send time.

Triton reads a sequence step's correlation ID and flags from the request's
`parameters` map (`sequence_id`: int64 or string, `sequence_start`, `sequence_end`:
bool). A protobuf map is a repeated field of entry messages, and a parser merges
repeated fields wherever they appear, so the parameters can simply follow the payload's
bytes: `msg + id entry + flag entries` parses as the payload with those parameters
(tests/unit/test_sequence.py checks it against protobuf's own parser). The flag entries
are built once (one per flag); the ID entry is a dozen bytes built per step. A
payload's bytes are copied once per step (its join); measured in the test's
`test_step_framing_parses_as_protobuf_and_is_cheap`.

Over HTTP the parameters go first in the request's JSON header, and the two length
headers are written per step (`http_step`).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass

#: ModelInferRequest.parameters (field 4, length-delimited)
_PARAM_TAG = b"\x22"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _entry(key: str, value: bytes) -> bytes:
    """One parameters map entry: key (field 1), InferParameter value (field 2)."""
    k = key.encode()
    inner = b"\x0a" + _varint(len(k)) + k + b"\x12" + _varint(len(value)) + value
    return _PARAM_TAG + _varint(len(inner)) + inner


#: bool_param (field 1) = true
_START = _entry("sequence_start", b"\x08\x01")
_END = _entry("sequence_end", b"\x08\x01")
#: flags (start, end) -> their entries
FLAGS: dict[tuple[bool, bool], bytes] = {
    (False, False): b"",
    (True, False): _START,
    (False, True): _END,
    (True, True): _START + _END,
}
_ID_KEY = b"\x0a\x0bsequence_id"


def id_entry(seq_id: int | str) -> bytes:
    """The `sequence_id` entry: int64_param (field 2) for a number, string_param (3)."""
    if isinstance(seq_id, str):
        s = seq_id.encode()
        value = b"\x1a" + _varint(len(s)) + s
    else:
        value = b"\x10" + _varint(seq_id)
    inner = _ID_KEY + b"\x12" + _varint(len(value)) + value
    return _PARAM_TAG + _varint(len(inner)) + inner


def step_params(seq_id: int | str, start: bool, end: bool) -> bytes:
    """The parameters of one step, to follow a serialized ModelInferRequest."""
    return id_entry(seq_id) + FLAGS[start, end]


def step_message(msg: bytes, seq_id: int | str, start: bool, end: bool) -> bytes:
    """The serialized ModelInferRequest of one step (unframed)."""
    return msg + step_params(seq_id, start, end)


def step_body(msg: bytes, seq_id: int | str, start: bool, end: bool) -> bytes:
    """One step as a gRPC message (5-byte prefix, uncompressed)."""
    params = id_entry(seq_id) + FLAGS[start, end]
    return b"".join((struct.pack(">BI", 0, len(msg) + len(params)), msg, params))


# ---- HTTP (KServe v2 REST, binary tensor extension) -------------------------------------
_IHCL = b"Inference-Header-Content-Length: "


@dataclass(frozen=True)
class HttpTemplate:
    """A pre-built HTTP request split where a step's lengths go: the head before and after
    its `Inference-Header-Content-Length` line (Content-Length ends the head), and the
    JSON header's length."""

    before: bytes
    after: bytes
    json_len: int

    @classmethod
    def of(cls, head: bytes) -> HttpTemplate:
        i = head.index(_IHCL)
        j = head.index(b"\r\n", i)
        json_len = int(head[i + len(_IHCL) : j])
        rest = head[j + 2 :]
        k = rest.rindex(b"Content-Length: ")
        return cls(head[:i], rest[:k], json_len)


def http_params(seq_id: int | str, start: bool, end: bool) -> bytes:
    """The start of a step's JSON header: its `parameters`, then the request's own keys."""
    params = {"sequence_id": seq_id, "sequence_start": start, "sequence_end": end}
    return b'{"parameters":' + json.dumps(params, separators=(",", ":")).encode() + b","


def http_step(
    t: HttpTemplate, body: bytes, seq_id: int | str, start: bool, end: bool
) -> tuple[bytes, bytes]:
    """One step as an HTTP request (head, body): the sequence parameters put first in the
    pre-built JSON header (which starts '{"inputs":', so no key is given twice)."""
    p = http_params(seq_id, start, end)
    out = p + body[1:]
    head = b"".join(
        (
            t.before,
            b"%s%d\r\n" % (_IHCL, t.json_len + len(p) - 1),
            t.after,
            b"Content-Length: %d\r\n\r\n" % len(out),
        )
    )
    return head, out
