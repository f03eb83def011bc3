"""The demo page: headless Chromium uploads an image, asks, and sees the overlay; bad uploads get a message.

Chromium is driven through chromedriver's W3C WebDriver HTTP protocol with urllib (no driver library).
Debian's chromium and chromium-driver are installed with apt-get when absent (as root); the browser test is
skipped, with the reason, only where they cannot be. The server runs attend-and-segment on the toy models,
so no training is needed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from flmm.demo.answer import GenerationSettings
from flmm.demo.pipeline import Demo
from flmm.demo.web import UploadLimits, make_server
from tests.conftest import TOY_CONFIG, build_toy_world, toy_overrides

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LIMITS = UploadLimits(max_upload_bytes=300_000, max_pixels=200 * 200, max_question_chars=200)


def browser_binaries() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installed with apt-get when absent; skip when that fails."""
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if all(found):
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium / chromium-driver are not installed and apt-get cannot run here (not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium: {' '.join(command)} failed: {done.stderr[-500:]}")
    found = shutil.which("chromium"), shutil.which("chromedriver")
    if not all(found):
        pytest.skip("apt-get installed chromium but chromium or chromedriver is not on PATH")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few W3C WebDriver commands the test needs, over HTTP to a chromedriver it starts."""

    def __init__(self, chromium: str, chromedriver: str):
        port = _free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.profile = tempfile.mkdtemp(prefix="flmm-chromium-")
        self.process = subprocess.Popen(
            [chromedriver, f"--port={port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 30
        while not self._ready():
            if time.monotonic() > deadline:
                self.process.terminate()
                raise RuntimeError("chromedriver did not start within 30 s")
            time.sleep(0.2)
        options = {"binary": chromium, "args": [*CHROMIUM_FLAGS, f"--user-data-dir={self.profile}"]}
        capabilities = {"capabilities": {"alwaysMatch": {"goog:chromeOptions": options}}}
        self.session = self._call("POST", "/session", capabilities)["sessionId"]

    def _ready(self) -> bool:
        try:
            return bool(self._call("GET", "/status")["ready"])
        except OSError:
            return False

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["value"]

    def command(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def find(self, css: str, timeout: float = 60) -> str:
        """The element id of the first match of `css`, waiting for it up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                found = self.command("POST", "/element", {"using": "css selector", "value": css})
                return next(iter(found.values()))
            except urllib.error.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def fill(self, css: str, text: str) -> None:
        self.command("POST", f"/element/{self.find(css)}/value", {"text": text})

    def script(self, source: str):
        return self.command("POST", "/execute/sync", {"script": source, "args": []})

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.command("DELETE", "")
        self.process.terminate()
        self.process.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server_url(tmp_path_factory):
    root = tmp_path_factory.mktemp("web")
    world = build_toy_world(root)
    demo = Demo.from_config(TOY_CONFIG, toy_overrides(world, root / "run"), device="cpu")
    server = make_server(demo, 0, GenerationSettings(max_new_tokens=4), LIMITS)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def browser(server_url):
    driver = WebDriver(*browser_binaries())
    yield driver
    driver.close()


def _png(path: Path, size: tuple[int, int] = (48, 64)) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def _post(url: str, image: bytes, question: str, phrases: str = "") -> tuple[int, str]:
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value, extra in (
        ("image", image, '; filename="x.png"'),
        ("question", question.encode(), ""),
        ("phrases", phrases.encode(), ""),
    ):
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode())
        body.write(value + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    request = urllib.request.Request(url + "/ask", data=body.getvalue(), method="POST")
    request.add_header("Content-Type", f"multipart/form-data; boundary={boundary}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_browser_uploads_asks_and_sees_the_overlay(browser, server_url, tmp_path):
    browser.command("POST", "/url", {"url": server_url + "/"})
    browser.fill("input[name=image]", str(_png(tmp_path / "photo.png")))
    browser.fill("input[name=question]", "what is the red circle?")
    browser.command("POST", f"/element/{browser.find('#ask')}/click", {})
    browser.find("#overlay")
    assert (
        browser.script("const i = document.getElementById('overlay'); return i.complete && i.naturalWidth")
        > 0
    )
    assert (
        browser.script("return document.getElementById('question').textContent") == "what is the red circle?"
    )


def test_browser_shows_the_message_of_a_bad_upload(browser, server_url, tmp_path):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("not an image")
    browser.command("POST", "/url", {"url": server_url + "/"})
    browser.fill("input[name=image]", str(text_file))
    browser.fill("input[name=question]", "what is it?")
    browser.command("POST", f"/element/{browser.find('#ask')}/click", {})
    browser.find("#error")
    assert "not an image" in browser.script("return document.getElementById('error').textContent")


def _png_header(width: int, height: int) -> bytes:
    """The start of a PNG claiming `width x height` pixels: IHDR and an empty IDAT, no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"")


def _raw_post(url: str, headers: str) -> tuple[int, str]:
    """POST /ask with hand-written headers and no body; the status and the page."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as connection:
        connection.sendall(f"POST /ask HTTP/1.1\r\nHost: {host}\r\n{headers}\r\n".encode())
        reply = b"".join(iter(lambda: connection.recv(65536), b"")).decode()
    head, _, page = reply.partition("\r\n\r\n")
    return int(head.split()[1]), page


def test_bad_requests_get_a_message_and_the_server_keeps_serving(server_url, tmp_path):
    image = _png(tmp_path / "ok.png").read_bytes()
    cases = [
        (b"plain text", "what is it?", 400, "not an image"),
        (image, "   ", 400, "question is empty"),
        (image, "x" * 201, 400, "longer than 200"),
        (b"", "what is it?", 400, "no image was uploaded"),
        (_png(tmp_path / "big.png", (300, 300)).read_bytes(), "what?", 400, "more than the limit of 40000"),
        (_png_header(30_000, 30_000), "what?", 400, "more pixels than the limit of 40000"),  # PIL's bomb
        (np.random.default_rng(1).bytes(400_000), "what?", 413, "more than the limit of 300000"),
    ]
    for data, question, status, message in cases:
        code, page = _post(server_url, data, question)
        assert (code, message in page) == (status, True), message
        assert 'id="error"' in page
    for headers, status, message in (
        ("Content-Length: -5\r\n", 400, "is negative"),
        ("Content-Type: multipart/form-data; boundary=x\r\n", 411, "no valid Content-Length"),
    ):
        code, page = _raw_post(server_url, headers)
        assert (code, message in page) == (status, True), message
    code, page = _post(server_url, image, "", phrases="red circle; sky")
    assert code == 200 and 'id="overlay"' in page and "<mark" in page
    with urllib.request.urlopen(server_url + "/", timeout=30) as response:
        assert response.status == 200
