"""volley: a distributed load generator for Triton / KServe v2 inference servers."""

from volley.version import PROTOCOL_VERSION, __version__

__all__ = ["PROTOCOL_VERSION", "__version__"]
