"""Headless Chromium for report tests: load a page, collect console errors, failed or
external requests, chart geometry, the values of given expressions (what the page
shows), and a full-page screenshot (DevTools protocol over a websocket, with aiohttp).

Chromium runs with no network beyond loopback (host resolver maps every name to
NOTFOUND), its own empty profile, and is killed (its process group) at the end.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--mute-audio",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--hide-scrollbars",
]

#: Reports every drawn chart (figure.chart svg): its id, size and number of marks.
CHARTS_JS = """JSON.stringify(Array.from(document.querySelectorAll('figure.chart svg')).map(s => {
  const r = s.getBoundingClientRect();
  return {id: s.dataset.chart || '', w: r.width, h: r.height,
          marks: s.querySelectorAll('path, rect, circle, line').length,
          empty: s.querySelector('text.na') !== null};
}))"""


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    title: str = ""
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    charts: list[dict[str, Any]] = field(default_factory=list)
    #: name -> value of each expression asked for (JSON values)
    values: dict[str, Any] = field(default_factory=dict)
    screenshot: Path | None = None


class _Cdp:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.events: list[dict[str, Any]] = []
        self.loaded = asyncio.Event()
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for msg in self.ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data and data["id"] in self.pending:
                self.pending.pop(data["id"]).set_result(data)
            elif "method" in data:
                self.events.append(data)
                if data["method"] == "Page.loadEventFired":
                    self.loaded.set()

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[self.next_id] = fut
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        reply = await asyncio.wait_for(fut, 20)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        result: dict[str, Any] = reply.get("result", {})
        return result


def _errors(events: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    errors: list[str] = []
    requests: list[str] = []
    for ev in events:
        m, p = ev["method"], ev.get("params", {})
        if m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            errors.append(
                f"exception: {d.get('exception', {}).get('description') or d.get('text')}"
            )
        elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(
                str(a.get("value", a.get("description", ""))) for a in p.get("args", [])
            )
            errors.append(f"console.{p['type']}: {args}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            errors.append(f"log ({e.get('source')}): {e.get('text')} {e.get('url', '')}".strip())
        elif m == "Network.loadingFailed":
            errors.append(f"request failed: {p.get('errorText')}")
        elif m == "Network.requestWillBeSent":
            requests.append(p.get("request", {}).get("url", ""))
    return errors, requests


async def _inspect(
    port: int, url: str, shot: Path | None, width: int, queries: Mapping[str, str]
) -> PageResult:
    async with aiohttp.ClientSession() as http:
        async with http.put(f"http://127.0.0.1:{port}/json/new?about:blank") as resp:
            target = await resp.json(content_type=None)
        async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = _Cdp(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                await cdp.call(f"{domain}.enable")
            await cdp.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            await cdp.call("Page.navigate", url=url)
            await asyncio.wait_for(cdp.loaded.wait(), 20)
            await asyncio.sleep(0.3)  # late console messages
            out = PageResult()
            title = await cdp.call("Runtime.evaluate", expression="document.title")
            out.title = str(title.get("result", {}).get("value", ""))
            charts = await cdp.call("Runtime.evaluate", expression=CHARTS_JS)
            out.charts = json.loads(charts["result"]["value"])
            for name, expr in queries.items():
                got = await cdp.call("Runtime.evaluate", expression=expr, returnByValue=True)
                out.values[name] = got.get("result", {}).get("value")
            if shot is not None:
                metrics = await cdp.call("Page.getLayoutMetrics")
                size = metrics.get("cssContentSize") or metrics["contentSize"]
                height = min(int(size["height"]) + 1, 16000)
                await cdp.call(
                    "Emulation.setDeviceMetricsOverride",
                    width=width,
                    height=height,
                    deviceScaleFactor=1,
                    mobile=False,
                )
                img = await cdp.call("Page.captureScreenshot", format="png")
                shot.write_bytes(base64.b64decode(img["data"]))
                out.screenshot = shot
            out.errors, out.requests = _errors(cdp.events)
            cdp.reader.cancel()
            return out


async def render_page(
    page: Path,
    screenshot: Path | None = None,
    width: int = 1200,
    timeout_s: float = 60.0,
    queries: Mapping[str, str] | None = None,
) -> PageResult:
    """Open `page` (a local file) in headless Chromium and report what happened, with
    the value of each of `queries` (name -> JavaScript expression) in `values`."""
    exe = find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium is not installed")
    profile = Path(tempfile.mkdtemp(prefix="volley-chromium-"))
    proc = subprocess.Popen(
        [exe, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None:
                raise RuntimeError(f"chromium exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("chromium did not open its DevTools port")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        return await asyncio.wait_for(
            _inspect(port, page.resolve().as_uri(), screenshot, width, queries or {}), timeout_s
        )
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        shutil.rmtree(profile, ignore_errors=True)
