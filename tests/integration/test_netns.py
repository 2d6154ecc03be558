"""The multi-host harness itself: namespaces reach each other, link cuts bite, cleanup is total."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
try:
    import tests.netns as nl
except ModuleNotFoundError:  # plain `pytest` run without the repo root on sys.path
    sys.path.insert(0, str(REPO))
    import tests.netns as nl

MAX_HOSTS = nl.MAX_HOSTS
MAX_IFNAME = nl.MAX_IFNAME
Host = nl.Host
NetnsLab = nl.NetnsLab
cleanup_stale = nl.cleanup_stale
lab_resources = nl.lab_resources
list_links = nl.list_links
list_netns = nl.list_netns
require_netns = nl.require_netns
wait_for_tcp = nl.wait_for_tcp

pytestmark = pytest.mark.netns

PORT = 7070  # every namespace has its own port space

ECHO_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(16)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    with c:
        c.settimeout(5)
        c.sendall(c.recv(1024))
"""

ECHO_CLIENT = r"""
import socket, sys
t = float(sys.argv[3])
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=t) as s:
    s.settimeout(t)
    s.sendall(b"volley")
    print(s.recv(1024).decode())
"""

lab = nl.netns_lab_fixture(2)


def _start_echo(lab: NetnsLab, host: Host) -> subprocess.Popen[str]:
    proc = lab.popen(
        host,
        [sys.executable, "-u", "-c", ECHO_SERVER, host.ip, str(PORT)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def _echo(lab: NetnsLab, src: Host, dst: Host, timeout: float = 1.0) -> bool:
    res = lab.run(
        src, [sys.executable, "-c", ECHO_CLIENT, dst.ip, str(PORT), str(timeout)], timeout=10
    )
    return res.returncode == 0 and res.stdout.strip() == "volley"


def _root_echo(ip: str, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((ip, PORT), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(b"volley")
            return s.recv(1024) == b"volley"
    except OSError:
        return False


def _ping(lab: NetnsLab, src: Host, dst: Host) -> bool:
    res = lab.run(src, ["ping", "-c", "2", "-W", "1", dst.ip], timeout=10)
    return res.returncode == 0


def test_names_fit_ifnamsiz() -> None:
    big = NetnsLab(MAX_HOSTS, prefix="vlyabcdefg")
    assert len(big.bridge) <= MAX_IFNAME
    assert len(f"{big.prefix}-h{MAX_HOSTS - 1}") <= MAX_IFNAME
    assert NetnsLab(2).prefix.startswith("vly")
    with pytest.raises(ValueError):
        NetnsLab(2, prefix="other")
    with pytest.raises(ValueError):
        NetnsLab(2, prefix="vlytoolongname")
    with pytest.raises(ValueError):
        NetnsLab(0)


def test_two_hosts_reach_each_other_and_link_cut(lab: NetnsLab) -> None:
    h0, h1 = lab.hosts
    assert (h0.ip, h1.ip) == (
        lab.gateway_ip.rsplit(".", 1)[0] + ".10",
        lab.gateway_ip.rsplit(".", 1)[0] + ".11",
    )
    assert lab.subnet.startswith("10.231.") and lab.subnet.endswith(".0/24")
    assert {h0.netns, h1.netns} <= set(list_netns())
    # lo is up in each namespace
    for h in lab.hosts:
        out = lab.run(h, ["ip", "-o", "link", "show", "lo"], timeout=10).stdout
        assert "UP" in out.split("<", 1)[1].split(">", 1)[0].split(",")
    # no default route: hosts reach only the lab subnet and loopback
    routes = lab.run(h0, ["ip", "-4", "route", "show"], timeout=10).stdout
    assert "default" not in routes

    _start_echo(lab, h1)
    _start_echo(lab, h0)
    wait_for_tcp(h1.ip, PORT, timeout=5)  # root namespace reaches hosts via the bridge
    assert _echo(lab, h0, h1)
    assert _echo(lab, h1, h0)
    assert _root_echo(h1.ip)
    has_ping = shutil.which("ping") is not None
    if has_ping:
        assert _ping(lab, h0, h1)

    lab.set_link(h1, up=False)  # cut host1 off
    assert not _echo(lab, h0, h1)
    assert not _root_echo(h1.ip)
    if has_ping:
        assert not _ping(lab, h0, h1)

    lab.set_link(h1, up=True)  # heal
    wait_for_tcp(h1.ip, PORT, timeout=5)
    assert _echo(lab, h0, h1)


def _lab_names(prefix: str) -> list[str]:
    return [n for n in list_netns() + list_links() if n.startswith(prefix + "-")]


def test_cleanup_on_exit_and_on_exception() -> None:
    require_netns()
    with NetnsLab(2) as lab1:
        prefix = lab1.prefix
        assert len(_lab_names(prefix)) == 5  # bridge, 2 netns, 2 veths
        proc = lab1.popen(lab1.hosts[0], ["sleep", "60"])
    assert _lab_names(prefix) == []
    assert proc.poll() is not None  # processes started in the lab are killed

    with pytest.raises(RuntimeError, match="boom"), NetnsLab(2) as lab2:
        prefix = lab2.prefix
        assert _lab_names(prefix)
        raise RuntimeError("boom")
    assert _lab_names(prefix) == []


def test_cleanup_stale_removes_killed_run_but_not_live_lab() -> None:
    require_netns()
    code = (
        "import sys, time\n"
        f"sys.path.insert(0, {str(REPO)!r})\n"
        "from tests.netns import NetnsLab\n"
        "lab = NetnsLab(2).__enter__()\n"
        "print(lab.prefix, flush=True)\n"
        "time.sleep(120)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        dead_prefix = child.stdout.readline().strip()
        assert dead_prefix.startswith("vly")
    finally:
        os.kill(child.pid, signal.SIGKILL)  # no cleanup runs: leftovers stay
        child.wait(timeout=10)
    assert len(_lab_names(dead_prefix)) == 5

    with NetnsLab(1) as live:
        removed = set(cleanup_stale("vly"))
        # a concurrent test run may be cleaning the same dead lab (it then holds the lock
        # and we skip it): wait for it to finish rather than assert who removed what
        deadline = time.monotonic() + 10
        while _lab_names(dead_prefix) and time.monotonic() < deadline:
            time.sleep(0.2)
            removed |= set(cleanup_stale(dead_prefix))
        assert _lab_names(dead_prefix) == []
        assert not any(n.startswith(live.prefix + "-") for n in removed)
        assert len(_lab_names(live.prefix)) == 3  # live lab untouched (holds its lock)
    assert lab_resources(dead_prefix + "-") == []
    assert lab_resources(live.prefix + "-") == []
