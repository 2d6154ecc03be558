"""`volley certs`: a CA and certificates for a test fleet (agents and coordinator).

Writes, into one folder:
  ca.pem / ca.key          the fleet's CA (keep ca.key offline for anything real)
  agent.pem / agent.key    server certificate for the agents, valid for every --host
  client.pem / client.key  client certificate for the coordinator (mutual TLS)
  token                    a random shared token (0600)
Keys are ECDSA P-256; private files are created 0600. Existing files are not
overwritten unless `force`.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FILES = ("ca.pem", "ca.key", "agent.pem", "agent.key", "client.pem", "client.key", "token")
PRIVATE = {"ca.key", "agent.key", "client.key", "token"}
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


class CertError(ValueError):
    """Bad `volley certs` arguments or an unwritable output folder."""


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "volley test fleet"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h.strip("[]"))))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def _check_host(h: str) -> str:
    h = h.strip()
    if not h or len(h) > 253 or any(c.isspace() for c in h) or "/" in h:
        raise CertError(f"--host {h!r}: expected a DNS name or an IP address")
    try:
        h.encode("ascii")
    except UnicodeEncodeError:
        raise CertError(f"--host {h!r}: use the ASCII (punycode) form of the name") from None
    return h


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _pem_cert(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _leaf(
    cn: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
    usage: x509.ObjectIdentifier,
    hosts: list[str] | None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if hosts:
        b = b.add_extension(_san(hosts), critical=False)
    return b.sign(ca_key, hashes.SHA256())


def generate_fleet(
    out: Path, hosts: list[str], days: int = 30, force: bool = False
) -> dict[str, Path]:
    """Write the CA, agent and client certificates and a token into `out`."""
    if not 1 <= days <= 3650:
        raise CertError("--days: must be between 1 and 3650")
    names = list(dict.fromkeys([_check_host(h) for h in hosts] + list(DEFAULT_HOSTS)))
    paths = {f: out / f for f in FILES}
    existing = [p.name for p in paths.values() if p.exists()]
    if existing and not force:
        raise CertError(f"{out} already holds {', '.join(existing)} (use --force to replace)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CertError(f"--out {out}: {exc.strerror or exc}") from None

    ca_key = _key()
    now = dt.datetime.now(dt.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("volley test fleet CA"))
        .issuer_name(_name("volley test fleet CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    agent_key, client_key = _key(), _key()
    agent_cert = _leaf(
        names[0], agent_key, ca_cert, ca_key, days, ExtendedKeyUsageOID.SERVER_AUTH, names
    )
    client_cert = _leaf(
        "volley-coordinator",
        client_key,
        ca_cert,
        ca_key,
        days,
        ExtendedKeyUsageOID.CLIENT_AUTH,
        None,
    )
    content = {
        "ca.pem": _pem_cert(ca_cert),
        "ca.key": _pem_key(ca_key),
        "agent.pem": _pem_cert(agent_cert),
        "agent.key": _pem_key(agent_key),
        "client.pem": _pem_cert(client_cert),
        "client.key": _pem_key(client_key),
        "token": (secrets.token_hex(32) + "\n").encode(),
    }
    for name, data in content.items():
        path = paths[name]
        mode = 0o600 if name in PRIVATE else 0o644
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(path, mode)
        except OSError as exc:
            raise CertError(f"{path}: {exc.strerror or exc}") from None
    return paths
