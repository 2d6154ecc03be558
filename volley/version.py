"""Version numbers shared by coordinator and agent."""

from __future__ import annotations

__version__ = "0.1.0"

#: Control-plane protocol version (proto/volley/v1). Bump on incompatible change.
PROTOCOL_VERSION = 4
