"""gRPC over HTTP/2, the parts every client of ours shares: the KServe v2 method paths,
message framing (5-byte prefix, optional gzip/deflate), `grpc-timeout` and the user agent.

The status codes are `volley.records`' one table; the HTTP/2 -> gRPC status mappings live
beside the HTTP/2 client (`volley.wire.h2`).
"""

from __future__ import annotations

import gzip
import struct
import zlib

from volley.version import __version__

MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"
MODEL_STREAM_INFER = "/inference.GRPCInferenceService/ModelStreamInfer"
USER_AGENT = f"volley/{__version__}"

U32 = struct.Struct(">I")


def grpc_frame(msg: bytes, compression: str) -> bytes:
    if compression == "gzip":
        data = gzip.compress(msg, compresslevel=6, mtime=0)
        return b"\x01" + struct.pack(">I", len(data)) + data
    if compression == "deflate":
        data = zlib.compress(msg, 6)
        return b"\x01" + struct.pack(">I", len(data)) + data
    return b"\x00" + struct.pack(">I", len(msg)) + msg


def grpc_unframe(data: bytes, encoding: str) -> bytes | None:
    """The one gRPC message in a unary response body, or None when the framing is wrong."""
    if len(data) < 5:
        return None
    flag = data[0]
    (n,) = U32.unpack_from(data, 1)
    if len(data) != 5 + n:
        return None
    msg = data[5:]
    if flag == 0:
        return msg
    try:
        if encoding == "gzip":
            return zlib.decompress(msg, wbits=31)
        if encoding == "deflate":
            return zlib.decompress(msg)
    except zlib.error:
        return None
    return None


def grpc_timeout_header(timeout_s: float) -> str:
    """grpc-timeout value: at most 8 digits and a unit."""
    ms = max(1, int(timeout_s * 1000))
    if ms < 10**8:
        return f"{ms}m"
    return f"{min(int(timeout_s), 10**8 - 1)}S"
