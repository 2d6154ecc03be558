"""The plan's target security: `tls` (CA, client certificate, server name) and `headers`
(names HTTP allows, none of the reserved ones, values given or from a secret).
"""

from __future__ import annotations

import re
from dataclasses import fields

from volley.plan.fields import as_dict, check_keys, get_str
from volley.plan.spec import (
    HeaderSpec,
    PlanError,
    TlsSpec,
)
from volley.shown import shown

_HEADER_NAME_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
#: Set by volley itself; a plan may not override them.
RESERVED_HEADERS = {
    "host",
    "content-type",
    "content-length",
    "te",
    "connection",
    "transfer-encoding",
    "inference-header-content-length",
    "grpc-timeout",
    "grpc-encoding",
    "grpc-accept-encoding",
    "content-encoding",
    "accept-encoding",
}


def tls_section(raw: object) -> TlsSpec | None:
    if raw is None or raw is False:
        return None
    if raw is True:
        return TlsSpec(enabled=True)
    d = as_dict(raw, "plan.tls")
    check_keys(d, {f.name for f in fields(TlsSpec)}, "plan.tls")
    enabled = d.get("enabled", True)
    verify = d.get("verify", True)
    if not isinstance(enabled, bool) or not isinstance(verify, bool):
        raise PlanError("plan.tls.enabled / plan.tls.verify: expected true or false")
    spec = TlsSpec(
        enabled=enabled,
        ca=get_str(d, "ca", "plan.tls", ""),
        cert=get_str(d, "cert", "plan.tls", ""),
        key=get_str(d, "key", "plan.tls", ""),
        server_name=get_str(d, "server_name", "plan.tls", ""),
        verify=verify,
    )
    if bool(spec.cert) != bool(spec.key):
        raise PlanError("plan.tls: a client certificate needs its key (cert and key together)")
    return spec if spec.enabled else None


_SECRET_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}\Z")


def header_section(raw: object, i: int) -> HeaderSpec:
    where = f"plan.headers[{i}]"
    d = as_dict(raw, where)
    check_keys(d, {"name", "value", "env", "file", "secret"}, where)
    name = get_str(d, "name", where, "")
    if not _HEADER_NAME_RE.match(name):
        raise PlanError(f"{where}.name: not a valid header name: {shown(name)}")
    if name.lower() in RESERVED_HEADERS or name.lower().startswith("grpc-"):
        raise PlanError(f"{where}.name: {shown(name)} is set by volley itself")
    spec = HeaderSpec(
        name=name,
        value=get_str(d, "value", where, ""),
        env=get_str(d, "env", where, ""),
        file=get_str(d, "file", where, ""),
        secret=get_str(d, "secret", where, ""),
    )
    sources = sum(bool(x) for x in (spec.value, spec.env, spec.file))
    if sources != 1 and not (spec.secret and sources == 0):
        raise PlanError(f"{where}: give exactly one of value, env, file or secret")
    if spec.secret and spec.value:
        raise PlanError(f"{where}: a secret (the agent's) goes with env or file, not value")
    if spec.secret and not _SECRET_NAME_RE.match(spec.secret):
        raise PlanError(f"{where}.secret: a name is 1-64 letters, digits, '_', '-' or '.'")
    if any(c in spec.value for c in "\r\n\0"):
        raise PlanError(f"{where}.value: control characters are not allowed")
    return spec
