"""How to reach the target: TLS context and request headers, shared by preflight and agents.

Secrets are read in exactly two places, never on an agent on a plan's say-so:

- On the coordinator (where `volley run` runs): `read_access(plan)` reads the header
  values a plan takes from an environment variable or a file, and the files plan.tls
  names. Preflight and the server monitor use them there; the run sends them to every
  agent in memory, over the authenticated control plane (RunRequest.headers and
  .target_tls), never in plan_json, plan.yaml or a log.
- On an agent, at its start: `read_header_secrets` resolves the operator's
  `--header-secret NAME=env:VAR|file:PATH`; a plan names such a secret (`secret: NAME`)
  and never sees its value.

`access_for_run` is the agent's side: it builds what its workers send from the plan,
the coordinator's values and the agent's own secrets, and refuses (PlanError) a plan
whose header or TLS material would have to be read on the agent.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from volley.plan import HeaderSpec, Plan, PlanError, TlsSpec

#: Header names whose values must not be indexed by HPACK (RFC 7541 §7.1.3).
SENSITIVE = {"authorization", "proxy-authorization", "cookie", "x-api-key"}
#: The largest header value or secret file read (a token, not a document).
MAX_SECRET_BYTES = 64 * 1024
#: The largest TLS file (a CA bundle) read for the target.
MAX_TLS_FILE_BYTES = 1024 * 1024


@dataclass(frozen=True)
class TargetAccess:
    """What reaching the target takes, in memory: the request headers (lower-case name,
    value) and the TLS material (PEM bytes). Its repr shows no value."""

    headers: tuple[tuple[str, str], ...] = ()
    ca: bytes = b""
    cert: bytes = b""
    key: bytes = b""

    def __repr__(self) -> str:
        names = ", ".join(n for n, _ in self.headers)
        have = [k for k in ("ca", "cert", "key") if getattr(self, k)]
        return f"TargetAccess(headers=[{names}], tls={have})"


# ---------------------------------------------------------------- the TLS context
def client_ssl_context(
    tls: TlsSpec, access: TargetAccess, alpn: list[str] | None = None
) -> ssl.SSLContext:
    """An SSLContext for the target from in-memory PEM (PlanError when it is unusable)."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if access.ca:
        try:
            ctx.load_verify_locations(cadata=access.ca.decode("ascii", "replace"))
        except (ssl.SSLError, ValueError) as exc:
            raise PlanError(f"tls.ca: not a usable PEM bundle ({_reason(exc)})") from None
    if access.cert:
        try:
            _load_cert_chain(ctx, access.cert, access.key)
        except (OSError, ssl.SSLError) as exc:
            raise PlanError(f"tls.cert/tls.key: not usable ({_reason(exc)})") from None
    if not tls.verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    return ctx


def _reason(exc: BaseException) -> str:
    return " ".join(str(getattr(exc, "strerror", None) or exc).split())


def _load_cert_chain(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """`load_cert_chain` only reads files: give it memory files (memfd), or, where there
    are none, files in a private temporary folder removed at once."""
    with contextlib.ExitStack() as files:
        cert_path = files.enter_context(_memory_file(cert, "cert"))
        key_path = files.enter_context(_memory_file(key, "key")) if key else None
        ctx.load_cert_chain(cert_path, key_path)


@contextlib.contextmanager
def _memory_file(data: bytes, name: str) -> Iterator[str]:
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd(f"volley-{name}", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="volley-tls-") as d:  # mode 0700
        path = Path(d) / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        yield str(path)


# ---------------------------------------------------------------- the coordinator's side
def read_file_bytes(path: str, what: str, limit: int = MAX_TLS_FILE_BYTES) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise PlanError(f"{what} {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise PlanError(f"{what} {path}: larger than {limit // 1024} KiB")
    return data


def _check_value(value: str, name: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise PlanError(f"header {name}: value has control characters")
    return value


def header_value(spec: HeaderSpec) -> str | None:
    """A header's value as the coordinator knows it: the plan's own, or read here from
    the environment variable or file it names; None for an agent secret (`secret`)
    that names no environment variable or file for the coordinator."""
    if spec.env:
        value = os.environ.get(spec.env)
        if value is None:
            raise PlanError(f"header {spec.name}: environment variable {spec.env} is not set")
    elif spec.file:
        raw = read_file_bytes(spec.file, f"header {spec.name}: file", MAX_SECRET_BYTES)
        value = _file_value(raw.decode("utf-8", "replace"), spec.name)
    elif spec.secret:
        return None
    else:
        value = spec.value
    return _check_value(value, spec.name)


@dataclass(frozen=True)
class CoordinatorAccess:
    """What the coordinator read for a run: what it sends itself (`here`: preflight,
    the server monitor) and what it sends each agent (`agent_values`: one per plan
    header, empty unless the agent cannot know it; RunRequest.headers)."""

    here: TargetAccess
    agent_values: tuple[tuple[str, str], ...]

    def __repr__(self) -> str:
        return f"CoordinatorAccess({self.here!r})"


def read_access(plan: Plan) -> CoordinatorAccess:
    """On the coordinator: read the plan's header values and TLS files (PlanError naming
    the header or file when one is unusable)."""
    values = [header_value(h) for h in plan.headers]
    here = tuple(
        (h.name.lower(), v) for h, v in zip(plan.headers, values, strict=True) if v is not None
    )
    agent_values = tuple(
        (h.name, v if (h.env or h.file) and not h.secret and v is not None else "")
        for h, v in zip(plan.headers, values, strict=True)
    )
    ca = cert = key = b""
    if plan.tls is not None:
        if plan.tls.ca:
            ca = read_file_bytes(plan.tls.ca, "tls.ca")
        if plan.tls.cert:
            cert = read_file_bytes(plan.tls.cert, "tls.cert")
            key = read_file_bytes(plan.tls.key, "tls.key") if plan.tls.key else b""
    return CoordinatorAccess(TargetAccess(here, ca, cert, key), agent_values)


# ---------------------------------------------------------------- the agent's side
def access_for_run(
    plan: Plan,
    values: Sequence[tuple[str, str]],
    ca: bytes,
    cert: bytes,
    key: bytes,
    secrets: Mapping[str, str],
) -> TargetAccess:
    """On an agent: what its workers send, from the plan's plain values, the
    coordinator's `values` (RunRequest.headers) and TLS material, and the agent's own
    `secrets`. Nothing is read here; PlanError (one line, no value in it) for a plan
    that would need this agent to read an environment variable or a file."""
    if values and len(values) != len(plan.headers):
        raise PlanError(
            f"the run carries {len(values)} header values for the plan's {len(plan.headers)}"
        )
    headers: list[tuple[str, str]] = []
    for i, spec in enumerate(plan.headers):
        where = f"plan.headers[{i}] ({spec.name})"
        if values and values[i][0].lower() != spec.name.lower():
            raise PlanError(f"{where}: the run's value is for header {values[i][0]!r}")
        if spec.secret:
            value = secrets.get(spec.secret)
            if value is None:
                raise PlanError(
                    f"{where}: this agent has no header secret {spec.secret!r} "
                    "(volley agent --header-secret NAME=env:VAR or NAME=file:PATH)"
                )
        elif spec.env or spec.file:
            if not values:
                kind = f"environment variable {spec.env}" if spec.env else f"file {spec.file}"
                raise PlanError(
                    f"{where} names the {kind}: an agent never reads one for a plan; the "
                    "coordinator reads it and sends the value (same volley version on both)"
                )
            value = values[i][1]
        else:
            value = spec.value
        headers.append((spec.name.lower(), _check_value(value, spec.name)))
    tls = plan.tls
    if tls is not None:
        for field, data in (("ca", ca), ("cert", cert), ("key", key)):
            path = getattr(tls, field)
            if path and not data:
                raise PlanError(
                    f"plan.tls.{field} names the file {path}: an agent never reads one for a "
                    "plan; the coordinator reads it and sends its contents"
                )
        return TargetAccess(
            tuple(headers),
            ca if tls.ca else b"",
            cert if tls.cert else b"",
            key if tls.key else b"",
        )
    return TargetAccess(tuple(headers))


def read_header_secrets(
    items: Sequence[str], env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The agent operator's `--header-secret NAME=env:VAR` / `NAME=file:PATH`, read once
    at the agent's start (PlanError naming the option, never the value)."""
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    for item in items:
        name, sep, source = item.partition("=")
        kind, colon, ref = source.partition(":")
        if not sep or not colon or not name or not ref or kind not in ("env", "file"):
            raise PlanError(
                f"--header-secret: expected NAME=env:VAR or NAME=file:PATH, got {item!r}"
            )
        if not all(c.isalnum() or c in "_-." for c in name) or len(name) > 64:
            raise PlanError(f"--header-secret {name!r}: a name is 1-64 letters, digits, _ - .")
        if name in out:
            raise PlanError(f"--header-secret {name}: given twice")
        if kind == "env":
            value = env.get(ref)
            if value is None:
                raise PlanError(f"--header-secret {name}: environment variable {ref} is not set")
        else:
            raw = read_file_bytes(ref, f"--header-secret {name}: file", MAX_SECRET_BYTES)
            value = raw.decode("utf-8", "replace").strip()
        if any(c in value for c in "\r\n\0"):
            raise PlanError(f"--header-secret {name}: the value has control characters")
        out[name] = value
    return out


# ---------------------------------------------------------------- header files
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
    file again on the coordinator (so the values never enter the plan)."""
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
