"""Drive ComfyUI's real web frontend in headless Chromium over the DevTools protocol.

Used to convert UI-format workflows exactly the way the web UI does when a user presses
"Queue": ``app.loadGraphData(workflow)`` then ``app.graphToPrompt()``. Only aiohttp (a
ComfyUI requirement) is needed; Chromium is Debian's ``chromium`` package.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
]


def find_chromium() -> str | None:
    for name in (os.environ.get("HONESTFACE_CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


#: Width and height of the page in CSS pixels.
VIEWPORT = (1600, 1000)


class BrowserError(RuntimeError):
    pass


@contextlib.contextmanager
def headless_web_ui(url: str) -> Iterator["HeadlessComfyUI"]:
    """ComfyUI's web UI at ``url`` open in a started headless Chromium, closed afterwards;
    the calling test is skipped where Chromium is not installed."""
    import pytest

    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not installed (Debian: apt-get install chromium); set HONESTFACE_CHROMIUM to a binary")
    browser = HeadlessComfyUI(url, chromium)
    try:
        browser.start()
        yield browser
    finally:
        browser.close()


class HeadlessComfyUI:
    """A headless Chromium showing the ComfyUI web UI at ``url``."""

    def __init__(self, url: str, chromium: str, timeout: float = 120.0) -> None:
        self.url = url
        self.chromium = chromium
        self.timeout = timeout
        self.profile = Path(tempfile.mkdtemp(prefix="honestface-chromium-"))
        self.process: subprocess.Popen | None = None
        self.loop = asyncio.new_event_loop()
        self.session: aiohttp.ClientSession | None = None
        self.socket = None
        self.ids = itertools.count(1)
        self.console: list[str] = []

    # -- life cycle -------------------------------------------------------------------

    def start(self) -> None:
        command = [self.chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}",
                   "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "about:blank"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise BrowserError("Chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.loop.run_until_complete(self._connect(port))
        self.call("Runtime.enable")
        self.call("Page.enable")
        # The window a user has on a laptop; layout and saved-view tests depend on it.
        self.call("Emulation.setDeviceMetricsOverride", width=VIEWPORT[0], height=VIEWPORT[1],
                  deviceScaleFactor=1, mobile=False)
        # A returning user: the template browser a first start opens would cover the graph.
        request = urllib.request.Request(f"{self.url}/api/settings/Comfy.TutorialCompleted", data=b"true",
                                         headers={"Content-Type": "application/json"}, method="POST")
        urllib.request.urlopen(request, timeout=30).close()
        self.call("Page.navigate", url=self.url)
        self.wait_for("window.app !== undefined && window.app.graph !== undefined && "
                      "typeof window.app.graphToPrompt === 'function' && "
                      "Object.keys(LiteGraph.registered_node_types).length > 0")

    async def _connect(self, port: int) -> None:
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        self.socket = await self.session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)

    def close(self) -> None:
        try:
            if self.socket is not None:
                self.loop.run_until_complete(self.socket.close())
            if self.session is not None:
                self.loop.run_until_complete(self.session.close())
        finally:
            self.loop.close()
            if self.process is not None and self.process.poll() is None:
                os.killpg(os.getpgid(self.process.pid), signal.SIGTERM)
                try:
                    self.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.killpg(os.getpgid(self.process.pid), signal.SIGKILL)
                    self.process.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)

    # -- protocol ---------------------------------------------------------------------

    def call(self, method: str, **params) -> dict:
        return self.loop.run_until_complete(asyncio.wait_for(self._call(method, params), self.timeout))

    async def _call(self, method: str, params: dict) -> dict:
        message_id = next(self.ids)
        await self.socket.send_str(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = await self.socket.receive()
            if message.type != aiohttp.WSMsgType.TEXT:
                raise BrowserError(f"DevTools connection closed: {message.type}")
            data = json.loads(message.data)
            if data.get("method") == "Runtime.consoleAPICalled":
                args = data["params"].get("args", [])
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args))
            elif data.get("method") == "Runtime.exceptionThrown":
                self.console.append(json.dumps(data["params"].get("exceptionDetails", {}))[:2000])
            if data.get("id") == message_id:
                if "error" in data:
                    raise BrowserError(f"{method}: {data['error']}")
                return data["result"]

    def evaluate(self, expression: str):
        """Evaluate JavaScript (promises awaited) and return its JSON value."""
        result = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"JavaScript error: {text}\nconsole:\n" + "\n".join(self.console[-30:]))
        return result["result"].get("value")

    def wait_for(self, condition: str, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.timeout)
        while time.monotonic() < deadline:
            try:
                if self.evaluate(f"(() => {{ try {{ return !!({condition}); }} catch (e) {{ return false; }} }})()"):
                    return
            except BrowserError:
                pass
            time.sleep(0.25)
        raise BrowserError(f"timed out waiting for: {condition}\nconsole:\n" + "\n".join(self.console[-30:]))

    # -- ComfyUI ----------------------------------------------------------------------

    def graph_to_prompt(self, workflow: dict) -> dict:
        """Load a UI-format workflow into the editor and return the API-format prompt."""
        script = (
            "(async () => {"
            f"  const workflow = {json.dumps(workflow)};"
            "  await window.app.loadGraphData(workflow, true, true, null);"
            "  const result = await window.app.graphToPrompt();"
            "  return JSON.stringify(result.output);"
            "})()"
        )
        return json.loads(self.evaluate(script))

    def queue_workflow(self, workflow: dict, widget_values: dict[str, dict] | None = None) -> None:
        """Load a UI-format workflow, set some widgets (node id -> {widget: value}) the way a
        user would, and press Queue (``app.queuePrompt``)."""
        script = (
            "(async () => {"
            f"  const workflow = {json.dumps(workflow)};"
            f"  const values = {json.dumps(widget_values or {})};"
            "  await window.app.loadGraphData(workflow, true, true, null);"
            "  for (const node of window.app.graph._nodes) {"
            "    const wanted = values[String(node.id)] || {};"
            "    for (const widget of node.widgets || []) {"
            "      if (widget.name in wanted) widget.value = wanted[widget.name];"
            "    }"
            "  }"
            "  await window.app.queuePrompt(0, 1);"
            "  return true;"
            "})()"
        )
        self.evaluate(script)

    def missing_models_dialog(self, workflow: dict, timeout_ms: int = 15000) -> str:
        """Load a UI-format workflow and return the text of the missing-models dialog the
        frontend opens for it ('' if none opens). Dialogs left open before are closed first."""
        script = (
            "(async () => {"
            "  const dialogs = () => [...document.querySelectorAll('.p-dialog')];"
            "  for (const dialog of dialogs()) {"
            "    dialog.querySelector('.p-dialog-close-button, .p-dialog-header-close')?.click();"
            "  }"
            "  for (let i = 0; i < 50 && dialogs().length; i++) await new Promise(r => setTimeout(r, 100));"
            f"  const workflow = {json.dumps(workflow)};"
            "  await window.app.loadGraphData(workflow, true, true, null);"
            f"  for (let waited = 0; waited < {timeout_ms}; waited += 100) {{"
            "    const text = dialogs().map(d => d.innerText).join('\\n');"
            "    if (text.includes('Missing Models')) return text;"
            "    await new Promise(r => setTimeout(r, 100));"
            "  }"
            "  return '';"
            "})()"
        )
        return self.evaluate(script)

    def close_dialogs(self) -> None:
        """Close the dialogs left open (the template browser a first start opens, a
        missing-models dialog), as a user would before looking at the graph."""
        self.evaluate(
            "(async () => {"
            "  const dialogs = () => [...document.querySelectorAll('.p-dialog')];"
            "  for (let i = 0; i < 50 && dialogs().length; i++) {"
            "    for (const dialog of dialogs()) dialog.querySelector('.p-dialog-close-button, .p-dialog-header-close, "
            "button[aria-label=\"Close\"]')?.click();"
            "    await new Promise(r => setTimeout(r, 100));"
            "  }"
            "  return dialogs().length;"
            "})()")
        for _ in range(3):  # the template browser closes on Escape
            for kind in ("keyDown", "keyUp"):
                self.call("Input.dispatchKeyEvent", type=kind, key="Escape", code="Escape", windowsVirtualKeyCode=27)
            time.sleep(0.2)

    def screenshot(self, path: Path) -> Path:
        """The page as a PNG file."""
        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def node_boxes(self) -> list[dict]:
        """Each node of the open graph as drawn: id, title, and its box in graph units
        (``x``, ``y``, ``w``, ``h``; the title bar included, image previews included since
        the frontend grows a node to hold them) and in screen pixels (``screen``: left, top,
        right, bottom under the current view); ``images``: how many preview images it shows."""
        script = (
            "(() => {"
            "  const canvas = window.app.canvas, ds = canvas.ds, rect = canvas.canvas.getBoundingClientRect();"
            "  const title = LiteGraph.NODE_TITLE_HEIGHT;"
            "  return JSON.stringify(window.app.graph._nodes.map(n => {"
            "    const x = n.pos[0], y = n.pos[1] - title, w = n.size[0], h = n.size[1] + title;"
            "    const sx = v => rect.left + (v + ds.offset[0]) * ds.scale;"
            "    const sy = v => rect.top + (v + ds.offset[1]) * ds.scale;"
            "    return {id: n.id, type: n.type, title: n.title, x, y, w, h,"
            "            screen: [sx(x), sy(y), sx(x + w), sy(y + h)], images: (n.imgs || []).length};"
            "  }));"
            "})()"
        )
        return json.loads(self.evaluate(script))

    def free_canvas_area(self) -> dict:
        """The part of the canvas no bar covers, in screen pixels: ``top`` below the bars at
        the top (menu, workflow tabs, run button), ``left`` right of the icon bar at the left
        edge, ``right`` and ``bottom`` the window's edges."""
        script = (
            "(() => {"
            "  const canvas = window.app.canvas.canvas.getBoundingClientRect();"
            "  let top = canvas.top, left = canvas.left;"
            "  for (const el of document.querySelectorAll('body *')) {"
            "    if (el.tagName === 'CANVAS' || el.closest('.dom-widget, .comfy-multiline-input, .p-dialog, .p-toast')) continue;"
            "    const r = el.getBoundingClientRect(), style = getComputedStyle(el);"
            "    if (style.visibility === 'hidden' || style.display === 'none' || style.opacity === '0') continue;"
            "    if (r.width < 20 || r.height < 8 || r.right <= canvas.left || r.left >= canvas.right) continue;"
            "    if (r.bottom < canvas.top + 150 && r.width < canvas.width * 0.9 || r.bottom < canvas.top + 60)"
            "      top = Math.max(top, r.bottom);"
            "  }"
            "  const bar = document.querySelector('.side-tool-bar-container');"
            "  if (bar) { const r = bar.getBoundingClientRect(); if (r.left <= canvas.left + 8 && r.width < 200) left = Math.max(left, r.right); }"
            "  return JSON.stringify({top, left, right: Math.min(canvas.right, window.innerWidth),"
            "                         bottom: Math.min(canvas.bottom, window.innerHeight)});"
            "})()"
        )
        return json.loads(self.evaluate(script))
