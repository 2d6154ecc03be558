"""HTTP/1.1 pieces shared by the agent's HTTP transport and the coordinator's probe."""

from __future__ import annotations


def dechunk(buf: bytes, pos: int) -> bytes | bool | None:
    """The body of a complete chunked message from `pos`; None if incomplete, False if bad."""
    parts: list[bytes] = []
    n = len(buf)
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        try:
            size = int(buf[pos:eol].split(b";")[0], 16)
        except ValueError:
            return False
        pos = eol + 2
        if size == 0:
            end = buf.find(b"\r\n\r\n", pos - 2)
            return b"".join(parts) if end >= 0 else None
        if n < pos + size + 2:
            return None
        parts.append(buf[pos : pos + size])
        pos += size + 2
