"""Control-plane security shared by agent and coordinator: token, TLS, loopback checks.

The shared token travels as gRPC metadata (`authorization: Bearer <token>`) and is
compared in constant time (hmac.compare_digest). It is read from a file or from
the environment (VOLLEY_TOKEN), never from the command line, where `ps` would show
it. TLS material is PEM files; with a client CA the agent requires client
certificates (mutual TLS).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

TOKEN_ENV = "VOLLEY_TOKEN"
#: Set by a parent that wants its `volley agent` child to exit with it (--local-agents).
PARENT_ENV = "VOLLEY_EXIT_WITH_PARENT"
#: A local agent's workers' cores ("3,4": worker w pins itself to the w-th, round robin),
#: set by the coordinator's `--local-agents` (coordinator/affinity.py).
WORKER_CPUS_ENV = "VOLLEY_WORKER_CPUS"
AUTH_KEY = "authorization"
BEARER = "Bearer "
MIN_TOKEN_CHARS = 8
MAX_TOKEN_CHARS = 4096
MAX_PEM_BYTES = 1024 * 1024


class SecurityError(ValueError):
    """Bad security configuration; the message names the option and what is wrong."""


# ---------------------------------------------------------------- token
def _check_token(token: str, where: str) -> str:
    if not token:
        raise SecurityError(f"{where}: the token is empty")
    if len(token) > MAX_TOKEN_CHARS:
        raise SecurityError(f"{where}: the token is longer than {MAX_TOKEN_CHARS} characters")
    if len(token) < MIN_TOKEN_CHARS:
        raise SecurityError(f"{where}: the token is shorter than {MIN_TOKEN_CHARS} characters")
    if not all(33 <= ord(c) <= 126 for c in token):
        raise SecurityError(f"{where}: the token must be printable ASCII without spaces")
    return token


def read_token(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> str:
    """The shared token from `path` (whitespace around it stripped), else from the
    environment variable VOLLEY_TOKEN, else "" (no token)."""
    env = os.environ if env is None else env
    if path:
        p = Path(path)
        try:
            if p.stat().st_size > MAX_TOKEN_CHARS + 64:
                raise SecurityError(f"--token-file {p}: too large for a token")
            text = p.read_text(encoding="ascii").strip()
        except UnicodeDecodeError:
            raise SecurityError(f"--token-file {p}: the token must be ASCII") from None
        except OSError as exc:
            raise SecurityError(f"--token-file {p}: {exc.strerror or exc}") from None
        return _check_token(text, f"--token-file {p}")
    value = env.get(TOKEN_ENV, "").strip()
    return _check_token(value, f"env {TOKEN_ENV}") if value else ""


def token_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata that carries the token (empty without one)."""
    return ((AUTH_KEY, BEARER + token),) if token else ()


def token_ok(metadata: Sequence[tuple[str, Any]] | None, token: str) -> tuple[bool, str]:
    """(accepted, why not) for the call metadata against the expected token."""
    presented: str | None = None
    for key, value in metadata or ():
        if key == AUTH_KEY:
            presented = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            break
    if presented is None:
        return False, "no token"
    if not presented.startswith(BEARER):
        return False, "malformed authorization metadata"
    given = presented[len(BEARER) :].encode("utf-8", "replace")
    if hmac.compare_digest(given, token.encode("utf-8")):
        return True, ""
    return False, "wrong token"


# ---------------------------------------------------------------- TLS
def read_pem(path: str | os.PathLike[str], option: str) -> bytes:
    p = Path(path)
    try:
        if p.stat().st_size > MAX_PEM_BYTES:
            raise SecurityError(f"{option} {p}: larger than {MAX_PEM_BYTES} bytes")
        data = p.read_bytes()
    except OSError as exc:
        raise SecurityError(f"{option} {p}: {exc.strerror or exc}") from None
    if b"-----BEGIN " not in data:
        raise SecurityError(f"{option} {p}: not a PEM file")
    return data


@dataclass(frozen=True)
class ServerTLS:
    """An agent's TLS identity; with client_ca the agent requires client certificates."""

    cert_pem: bytes = field(repr=False)
    key_pem: bytes = field(repr=False)
    client_ca_pem: bytes | None = field(default=None, repr=False)

    @property
    def mutual(self) -> bool:
        return self.client_ca_pem is not None

    def credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(self.key_pem, self.cert_pem)],
            root_certificates=self.client_ca_pem,
            require_client_auth=self.client_ca_pem is not None,
        )


def load_server_tls(cert: str | None, key: str | None, client_ca: str | None) -> ServerTLS | None:
    if not cert and not key:
        if client_ca:
            raise SecurityError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cert and key):
        raise SecurityError("give both --tls-cert and --tls-key")
    return ServerTLS(
        read_pem(cert, "--tls-cert"),
        read_pem(key, "--tls-key"),
        read_pem(client_ca, "--tls-client-ca") if client_ca else None,
    )


@dataclass(frozen=True)
class ClientSecurity:
    """How the coordinator authenticates to agents (and verifies them with TLS)."""

    token: str = field(default="", repr=False)
    ca_pem: bytes | None = field(default=None, repr=False)
    cert_pem: bytes | None = field(default=None, repr=False)
    key_pem: bytes | None = field(default=None, repr=False)

    @property
    def tls(self) -> bool:
        return self.ca_pem is not None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return token_metadata(self.token)

    def channel(self, address: str, options: Sequence[tuple[str, Any]]) -> grpc.aio.Channel:
        if self.ca_pem is None:
            return grpc.aio.insecure_channel(address, options=list(options))
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.ca_pem,
            private_key=self.key_pem,
            certificate_chain=self.cert_pem,
        )
        return grpc.aio.secure_channel(address, creds, options=list(options))


def load_client_security(
    token_file: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
    env: Mapping[str, str] | None = None,
) -> ClientSecurity:
    token = read_token(token_file, env)
    if (cert or key) and not ca:
        raise SecurityError("--agent-tls-cert/--agent-tls-key need --agent-tls-ca (the agents' CA)")
    if bool(cert) != bool(key):
        raise SecurityError("give both --agent-tls-cert and --agent-tls-key")
    return ClientSecurity(
        token=token,
        ca_pem=read_pem(ca, "--agent-tls-ca") if ca else None,
        cert_pem=read_pem(cert, "--agent-tls-cert") if cert else None,
        key_pem=read_pem(key, "--agent-tls-key") if key else None,
    )


# ---------------------------------------------------------------- listening
def is_loopback_host(host: str) -> bool:
    """True when every address `host` names is a loopback address."""
    h = host.strip().strip("[]")
    if h.lower() in ("localhost", "localhost.", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(h, None)
    except (socket.gaierror, UnicodeError, OSError):
        return False
    addrs = {str(i[4][0]).split("%", 1)[0] for i in infos}
    return bool(addrs) and all(ipaddress.ip_address(a).is_loopback for a in addrs)


def check_listen(host: str, token: str, tls: ServerTLS | None) -> None:
    """Refuse a non-loopback listen address without authentication (token or mTLS)."""
    if is_loopback_host(host):
        return
    if token or (tls is not None and tls.mutual):
        return
    raise SecurityError(
        f"refusing to listen on {host} (not loopback) without authentication: give "
        f"--token-file PATH (or env {TOKEN_ENV}) or mutual TLS (--tls-cert, --tls-key, "
        "--tls-client-ca)"
    )
