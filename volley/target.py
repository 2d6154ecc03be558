"""How to reach the target: TLS context and request headers, shared by preflight and agents.

Both are resolved where requests are sent (the coordinator for preflight, each agent
host for the load): certificate paths are opened and header secrets read from the
environment or a file there, so secrets never travel on a command line or in plan.yaml.
"""

from __future__ import annotations

import os
import ssl
from pathlib import Path

from volley.plan import HeaderSpec, Plan, PlanError, TlsSpec

#: Header names whose values must not be indexed by HPACK (RFC 7541 §7.1.3).
SENSITIVE = {"authorization", "proxy-authorization", "cookie", "x-api-key"}


def client_ssl_context(tls: TlsSpec, alpn: list[str] | None = None) -> ssl.SSLContext:
    """An SSLContext for the target (PlanError naming the file when one is unusable)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if tls.ca:
        try:
            ctx.load_verify_locations(cafile=tls.ca)
        except (OSError, ssl.SSLError) as exc:
            raise PlanError(f"tls.ca {tls.ca}: {getattr(exc, 'strerror', None) or exc}") from None
    if tls.cert:
        try:
            ctx.load_cert_chain(tls.cert, tls.key or None)
        except (OSError, ssl.SSLError) as exc:
            raise PlanError(
                f"tls.cert/tls.key {tls.cert}: {getattr(exc, 'strerror', None) or exc}"
            ) from None
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def read_file_bytes(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise PlanError(f"{what} {path}: {exc.strerror or exc}") from None


def header_value(spec: HeaderSpec) -> str:
    if spec.env:
        value = os.environ.get(spec.env)
        if value is None:
            raise PlanError(f"header {spec.name}: environment variable {spec.env} is not set")
    elif spec.file:
        text = read_file_bytes(spec.file, f"header {spec.name}: file").decode("utf-8", "replace")
        value = _file_value(text, spec.name)
    else:
        value = spec.value
    if any(c in value for c in "\r\n\0"):
        raise PlanError(f"header {spec.name}: value has control characters")
    return value


def resolve_headers(plan: Plan) -> list[tuple[str, str]]:
    """(lower-case name, value) pairs to send with every request."""
    return [(h.name.lower(), header_value(h)) for h in plan.headers]


def _file_value(text: str, name: str) -> str:
    """A header file holds either `Name: value` lines (curl -H @file style; # comments)
    or just the value (a token file, as secrets are mounted)."""
    for line in text.splitlines():
        k, sep, v = line.strip().partition(":")
        if sep and k.strip().lower() == name.lower() and not k.startswith("#"):
            return v.strip()
    return text.strip()


def parse_header_file(text: str, path: str) -> list[HeaderSpec]:
    """The headers named in a `Name: value` file, as specs that read each value from the
    file again where requests are sent (so the values never enter the plan)."""
    out: list[HeaderSpec] = []
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, _ = line.partition(":")
        if not sep or not name.strip():
            raise PlanError(f"header file {path} line {n}: expected 'Name: value'")
        out.append(HeaderSpec(name=name.strip(), file=path))
    return out


def target_host_port(plan: Plan) -> tuple[str, int]:
    from volley.plan import parse_address

    return parse_address(plan.target, "plan.target")
