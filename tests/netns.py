"""Multi-host test harness: "hosts" are Linux network namespaces on this machine.

A :class:`NetnsLab` builds, for ``n`` hosts::

    root netns:  bridge <P>-br  10.231.X.1/24   (so the root namespace reaches every host)
                   |-- veth <P>-h0  <-->  eth0 10.231.X.10/24  in netns <P>-n0
                   |-- veth <P>-h1  <-->  eth0 10.231.X.11/24  in netns <P>-n1
                   ...

``P`` is a per-lab prefix (``vly`` + random hex by default) and ``X`` a random free
third octet, so labs running in parallel do not clash. Namespaces get ``lo`` up and
no default route: traffic from a host can only reach lab addresses or loopback.

Everything is removed on exit (normal or exception, plus an ``atexit`` hook). A lab
holds an ``flock`` on ``<lock dir>/<P>.lock`` for its whole life, so
:func:`cleanup_stale` removes only leftovers of labs whose process is gone (e.g.
SIGKILLed), never a live lab of a concurrent run.

Needs root and iproute2 (Debian/Ubuntu package ``iproute2``). Every resource name
starts with ``vly`` and is at most 15 characters (IFNAMSIZ - 1).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import os
import random
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

NAME_PREFIX = "vly"
MAX_IFNAME = 15
SUBNET_BASE = "10.231"
HOST_OFFSET = 10  # first host gets .10
MAX_HOSTS = 244  # .10 … .253
_PREFIX_RE = re.compile(r"^vly[a-z0-9]{0,7}$")  # ≤ 10 chars, no '-'
_RESOURCE_RE = re.compile(r"^(vly[a-z0-9]{0,7})-(br|n\d+|h\d+)$")
_IP_TIMEOUT_S = 15.0


class NetnsError(RuntimeError):
    """An ``ip`` command failed or a lab could not be built / torn down."""


@dataclass(frozen=True)
class Host:
    """One simulated host: a network namespace with one address on the lab subnet."""

    name: str  # e.g. "host0"
    netns: str  # namespace name, e.g. "vly3fa21-n0"
    ip: str  # e.g. "10.231.17.10"
    index: int
    veth: str  # root-namespace end of the veth pair (bridge port), e.g. "vly3fa21-h0"


# --------------------------------------------------------------------------- helpers


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=_IP_TIMEOUT_S, check=False
    )
    if check and proc.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _lock_dir() -> Path:
    env = os.environ.get("VOLLEY_NETNS_LOCK_DIR")
    candidates = [Path(env)] if env else []
    candidates += [Path("/run/volley-netns"), Path(tempfile.gettempdir()) / "volley-netns"]
    for cand in candidates:
        try:
            cand.mkdir(parents=True, exist_ok=True)
            if os.access(cand, os.W_OK):
                return cand
        except OSError:
            continue
    raise NetnsError("no writable lock directory for netns labs")


def _try_lock(path: Path, blocking: bool = False) -> IO[str] | None:
    fh = path.open("a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except BlockingIOError:
        fh.close()
        return None
    return fh


def _release(fh: IO[str] | None) -> None:
    if fh is not None:
        with contextlib.suppress(OSError):
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
        fh.close()


def list_netns() -> list[str]:
    """Names of all network namespaces (``ip netns list``)."""
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def list_links() -> list[str]:
    """Names of all links in the root namespace (``ip -o link show``)."""
    out = _ip("-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            names.append(parts[1].strip().split("@", 1)[0])
    return names


def lab_resources(prefix: str = NAME_PREFIX) -> list[str]:
    """Lab-owned netns and link names (matching the lab naming scheme) starting with prefix."""
    return sorted(
        n
        for n in set(list_netns()) | set(list_links())
        if n.startswith(prefix) and _RESOURCE_RE.match(n)
    )


def _delete_resources(lab_prefix: str) -> list[str]:
    """Delete every resource of one lab prefix; return names still present afterwards."""
    links = [n for n in list_links() if _RESOURCE_RE.match(n) and n.split("-")[0] == lab_prefix]
    # veths first (deleting one end deletes the pair synchronously), then netns, then bridge
    for name in sorted(links, key=lambda n: n.endswith("-br")):
        _ip("link", "del", name, check=False)
    for ns in list_netns():
        if _RESOURCE_RE.match(ns) and ns.split("-")[0] == lab_prefix:
            _ip("netns", "del", ns, check=False)
    deadline = time.monotonic() + 5.0
    while True:
        left = [n for n in lab_resources(lab_prefix) if n.split("-")[0] == lab_prefix]
        if not left or time.monotonic() > deadline:
            return left
        for name in left:  # retry: veth teardown after netns del is asynchronous
            if name in list_links():
                _ip("link", "del", name, check=False)
        time.sleep(0.1)


def cleanup_stale(prefix: str = NAME_PREFIX) -> list[str]:
    """Remove leftovers of dead labs (names starting with ``prefix``); return removed names.

    A lab whose owner process is alive holds its lock and is left alone.
    """
    lock_dir = _lock_dir()
    by_lab: dict[str, list[str]] = {}
    for name in lab_resources(prefix):
        m = _RESOURCE_RE.match(name)
        if m:
            by_lab.setdefault(m.group(1), []).append(name)
    removed: list[str] = []
    for lab_prefix, names in sorted(by_lab.items()):
        lock_path = lock_dir / f"{lab_prefix}.lock"
        fh = _try_lock(lock_path)
        if fh is None:
            continue  # live lab
        try:
            left = _delete_resources(lab_prefix)
            removed += [n for n in names if n not in left]
            with contextlib.suppress(OSError):
                lock_path.unlink()
        finally:
            _release(fh)
    return removed


def wait_for_tcp(ip: str, port: int, timeout: float = 10.0) -> None:
    """Wait until ``ip:port`` accepts a TCP connection (from the root namespace)."""
    deadline = time.monotonic() + timeout
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((ip, port), timeout=0.5):
                return
        except OSError as exc:
            last = exc
            time.sleep(0.05)
    raise TimeoutError(f"{ip}:{port} not accepting connections after {timeout}s: {last}")


# --------------------------------------------------------------------------- the lab


class NetnsLab:
    """Context manager: a bridge plus ``n_hosts`` namespaces, each with one veth address."""

    _avail_reason: str | None = None
    _avail_checked = False

    def __init__(self, n_hosts: int, prefix: str | None = None) -> None:
        if not 1 <= n_hosts <= MAX_HOSTS:
            raise ValueError(f"n_hosts must be 1..{MAX_HOSTS}, got {n_hosts}")
        if prefix is None:
            prefix = NAME_PREFIX + secrets.token_hex(3)  # vly + 6 hex = 9 chars
        if not _PREFIX_RE.match(prefix):
            raise ValueError(f"prefix must match {_PREFIX_RE.pattern!r} (got {prefix!r})")
        self.n_hosts = n_hosts
        self.prefix = prefix
        self.bridge = f"{prefix}-br"
        longest = max(self.bridge, f"{prefix}-h{n_hosts - 1}", key=len)
        if len(longest) > MAX_IFNAME:
            raise ValueError(f"interface name {longest!r} longer than {MAX_IFNAME} chars")
        self.subnet = ""  # "10.231.X.0/24", set on enter
        self.gateway_ip = ""  # bridge address in the root namespace (10.231.X.1)
        self.hosts: list[Host] = []
        self._lock: IO[str] | None = None
        self._lock_path: Path | None = None
        self._procs: list[subprocess.Popen[Any]] = []
        self._active = False

    # ---- availability ---------------------------------------------------------------

    @staticmethod
    def unavailable_reason() -> str | None:
        """None when labs can be built here, else why not (cached)."""
        if NetnsLab._avail_checked:
            return NetnsLab._avail_reason
        reason: str | None = None
        if os.geteuid() != 0:
            reason = "network namespaces need root (euid != 0)"
        elif shutil.which("ip") is None:
            reason = "`ip` not found (install the iproute2 package)"
        else:
            try:
                with NetnsLab(1, prefix=NAME_PREFIX + "z" + secrets.token_hex(3)) as lab:
                    res = lab.run(lab.hosts[0], ["ip", "-o", "addr", "show", "eth0"], timeout=10)
                    if lab.hosts[0].ip not in res.stdout:
                        reason = f"ip netns exec does not work: {res.stderr.strip()}"
            except (NetnsError, OSError, subprocess.SubprocessError) as exc:
                reason = f"cannot create a netns/bridge/veth lab: {exc}"
        NetnsLab._avail_reason = reason
        NetnsLab._avail_checked = True
        return reason

    @staticmethod
    def available() -> bool:
        """Root, ``ip`` present, and a namespace + bridge + veth can actually be created."""
        return NetnsLab.unavailable_reason() is None

    # ---- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> NetnsLab:
        if self._active:
            raise NetnsError("lab already entered")
        lock_dir = _lock_dir()
        self._lock_path = lock_dir / f"{self.prefix}.lock"
        self._lock = _try_lock(self._lock_path)
        if self._lock is None:
            raise NetnsError(f"lab prefix {self.prefix!r} is in use by a live process")
        self._active = True
        atexit.register(self.cleanup)
        try:
            if lab_resources(self.prefix + "-"):
                raise NetnsError(f"resources named {self.prefix}-* already exist")
            self._build(lock_dir)
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        left = self.cleanup()
        if left and exc_type is None:
            raise NetnsError(f"lab cleanup left resources behind: {left}")

    def _build(self, lock_dir: Path) -> None:
        alloc = _try_lock(lock_dir / "alloc.lock", blocking=True)
        try:
            octet = self._pick_octet()
            self.subnet = f"{SUBNET_BASE}.{octet}.0/24"
            self.gateway_ip = f"{SUBNET_BASE}.{octet}.1"
            # keep bridged frames out of iptables (br_netfilter + FORWARD DROP would eat them)
            nf_off = ["nf_call_iptables", "0", "nf_call_ip6tables", "0", "nf_call_arptables", "0"]
            if _ip("link", "add", self.bridge, "type", "bridge", *nf_off, check=False).returncode:
                _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway_ip}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        finally:
            _release(alloc)
        for i in range(self.n_hosts):
            host = Host(
                name=f"host{i}",
                netns=f"{self.prefix}-n{i}",
                ip=f"{SUBNET_BASE}.{octet}.{HOST_OFFSET + i}",
                index=i,
                veth=f"{self.prefix}-h{i}",
            )
            _ip("netns", "add", host.netns)
            self.hosts.append(host)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", "eth0",
                "netns", host.netns)  # fmt: skip
            _ip("link", "set", host.veth, "master", self.bridge)
            _ip("link", "set", host.veth, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", "eth0")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
        for host in self.hosts:
            self._wait_carrier(host, True)

    @staticmethod
    def _pick_octet() -> int:
        used_text = _ip("-4", "-o", "addr", "show", check=False).stdout
        used_text += _ip("-4", "route", "show", "table", "all", check=False).stdout
        used = {int(m) for m in re.findall(rf"{re.escape(SUBNET_BASE)}\.(\d+)\.", used_text)}
        free = [o for o in range(256) if o not in used]
        if not free:
            raise NetnsError(f"no free {SUBNET_BASE}.X.0/24 subnet")
        return random.choice(free)

    def _wait_carrier(self, host: Host, up: bool, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            out = _ip("-n", host.netns, "-o", "link", "show", "eth0", check=False).stdout
            flags = out.split("<", 1)[-1].split(">", 1)[0].split(",")
            if ("LOWER_UP" in flags) == up:
                return
            if time.monotonic() > deadline:
                raise NetnsError(f"{host.netns}/eth0 carrier not {'up' if up else 'down'}: {out}")
            time.sleep(0.02)

    def cleanup(self) -> list[str]:
        """Kill processes started with :meth:`popen`, delete every resource. Idempotent.

        Returns the names that could not be removed (empty on success).
        """
        if not self._active:
            return []
        self._active = False
        for proc in self._procs:
            if proc.poll() is None:
                with contextlib.suppress(OSError):
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        self._procs.clear()
        try:
            left = _delete_resources(self.prefix)
        finally:
            if self._lock_path is not None:
                with contextlib.suppress(OSError):
                    self._lock_path.unlink()
            _release(self._lock)
            self._lock = None
            with contextlib.suppress(Exception):
                atexit.unregister(self.cleanup)
        return left

    # ---- using hosts --------------------------------------------------------------------

    def host(self, index_or_name: int | str) -> Host:
        if isinstance(index_or_name, int):
            return self.hosts[index_or_name]
        for h in self.hosts:
            if index_or_name in (h.name, h.netns, h.ip):
                return h
        raise KeyError(index_or_name)

    def _argv(self, host: Host, argv: Sequence[str]) -> list[str]:
        if not self._active:
            raise NetnsError("lab is not active (use it inside `with NetnsLab(...)`)")
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of strings, not a string")
        return ["ip", "netns", "exec", host.netns, *argv]

    def popen(self, host: Host, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` inside the host's namespace (environment passed through).

        The process is killed on lab exit if still running.
        """
        kwargs.setdefault("env", os.environ.copy())
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(host, argv), **kwargs)
        self._procs.append(proc)
        return proc

    def run(
        self, host: Host, argv: Sequence[str], timeout: float = 30.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the host's namespace to completion (text, captured, no check)."""
        kwargs.setdefault("env", os.environ.copy())
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("check", False)
        return subprocess.run(self._argv(host, argv), timeout=timeout, **kwargs)

    def set_link(self, host: Host, up: bool) -> None:
        """Cut a host off the network (``up=False``) or reconnect it, via its bridge port."""
        if not self._active:
            raise NetnsError("lab is not active")
        _ip("link", "set", host.veth, "up" if up else "down")
        self._wait_carrier(host, up)


# --------------------------------------------------------------------------- pytest glue


def _ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def require_netns() -> None:
    """Skip the calling test when labs cannot be built; under ``CI=true`` fail instead."""
    import pytest

    reason = NetnsLab.unavailable_reason()
    if reason is None:
        return
    if _ci():
        pytest.fail(f"netns lab unavailable under CI=true (CI runs as root): {reason}")
    pytest.skip(f"netns lab unavailable: {reason}")


def netns_lab_fixture(n_hosts: int = 2, *, scope: str = "function") -> Callable[..., Any]:
    """Fixture factory. In a test module: ``lab = netns_lab_fixture(3)``; then ``def test_x(lab)``.

    Skips (or fails under CI=true) when unavailable; removes stale leftovers first.
    """
    import pytest

    def _lab() -> Iterator[NetnsLab]:
        require_netns()
        cleanup_stale()
        with NetnsLab(n_hosts) as lab:
            yield lab

    fixture: Callable[..., Any] = pytest.fixture(scope=scope)(_lab)  # type: ignore[call-overload]
    return fixture
