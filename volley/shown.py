"""Values quoted in error messages, cut to a bounded length.

Every message that echoes what a user or a peer sent goes through `shown` (a value, as
its repr) or `clipped` (text): a 100 kB plan field must not become a 100 kB error line,
nor a gRPC status message over the trailer size limit (about 8 kB), which would never
reach the client.
"""

from __future__ import annotations

#: The most characters of one echoed value an error message quotes.
MAX_SHOWN = 200


def clipped(text: str, limit: int = MAX_SHOWN) -> str:
    """`text` cut to about `limit` characters, saying how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def shown(value: object, limit: int = MAX_SHOWN) -> str:
    """`repr(value)` for an error message, at most about `limit` characters."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 256:
        # repr() of a huge int is slow, and past 4300 digits it raises
        digits = int(value.bit_length() * 0.30103) + 1
        return f"an integer of about {digits} digits"
    if isinstance(value, str | bytes) and len(value) > limit:
        # repr() of the head only: no copy of a 100 MB value
        return f"{repr(value[:limit])[:limit]}... ({len(value)} characters)"
    try:
        text = repr(value)
    except (ValueError, RecursionError):  # ints nested in containers, deep nesting
        return f"a {type(value).__name__}"
    return clipped(text, limit)
