"""The demo's Gradio app against hostile clients: a 100 GB upload, oversized fields, bad images, values
outside the page's choices, foreign Host names, cross-site requests, more questions than the queue holds
and a model that raises.

One app per module (small limits, a queue of 2) on a toy attend-and-segment Demo wrapped so that a test can
make it fail or slow. Every client socket has a timeout, so no test can hang.
"""

from __future__ import annotations

import json
import logging
import socket
import struct
import threading
import time
import zlib
from concurrent.futures import wait
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from flmm.demo.answer import GenerationSettings
from flmm.demo.gradio_app import INTERNAL_ERROR, WebLimits, build_app, launch
from flmm.demo.pipeline import Demo
from tests.conftest import TOY_CONFIG, ToyWorld, toy_overrides

LIMITS = WebLimits(
    max_upload_bytes=300_000,
    max_pixels=200 * 200,
    max_question_chars=200,
    max_phrases_chars=60,
    max_phrases=3,
    max_queue=2,
)
CLIENT_TIMEOUT_S = 20.0  # a client never waits longer than this for one socket operation
SECRET = "secret detail /home/someone/weights.bin"


class FlakyDemo:
    """A Demo whose `run` raises RuntimeError(SECRET) while `failing` is set, takes `delay_s` more while it
    is set, and counts how many runs overlap."""

    def __init__(self, demo: Demo):
        self.demo, self.mode = demo, demo.mode
        self.failing, self.delay_s = False, 0.0
        self.running = self.most_at_once = 0
        self.lock = threading.Lock()

    def run(self, *args, **kwargs):
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            time.sleep(self.delay_s)
            if self.failing:
                raise RuntimeError(SECRET)
            return self.demo.run(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture(scope="module")
def flaky(toy_world: ToyWorld, tmp_path_factory) -> FlakyDemo:
    overrides = toy_overrides(toy_world, tmp_path_factory.mktemp("web_hostile"))
    return FlakyDemo(Demo.from_config(TOY_CONFIG, overrides, device="cpu"))


@pytest.fixture(scope="module")
def url(flaky):
    app = build_app([flaky], LIMITS, GenerationSettings(max_new_tokens=4))
    yield launch(app, LIMITS, port=0)
    app.close(verbose=False)


@pytest.fixture
def demo(flaky) -> FlakyDemo:
    """The app's Demo, working and fast again after each test."""
    yield flaky
    flaky.failing, flaky.delay_s = False, 0.0


@pytest.fixture(scope="module")
def client(url) -> Client:
    return Client(url, verbose=False, analytics_enabled=False)


def write_image(path: Path, size: tuple[int, int] = (48, 64)) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


def png_header(width: int, height: int) -> bytes:
    """The start of a PNG claiming `width x height` pixels: IHDR and an empty IDAT, no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"")


def ask(
    client: Client, image: Path, question: str = "what is it?", phrases: str = "", mode=None, style="plain"
):
    """The app's three outputs for one question through the API."""
    mode = mode or "attend-and-segment"
    return client.predict(handle_file(image), question, phrases, mode, style, api_name="/ask")


def exchange(url: str, request: str, body: bytes = b"", then: bytes = b"") -> tuple[int, str, float]:
    """Send `request` (the head, its blank line added) and `body`, then as much of `then` as the server
    takes; the status, the response head and the seconds until the response began."""
    host, port = url.removeprefix("http://").rstrip("/").split(":")
    with socket.create_connection((host, int(port)), timeout=CLIENT_TIMEOUT_S) as connection:
        start = time.monotonic()
        connection.sendall(request.encode() + b"\r\n" + body)
        for offset in range(0, len(then), 65536):
            try:
                connection.sendall(then[offset : offset + 65536])
            except OSError:  # the server answered and stopped reading: the rest is not sent
                break
        reply = connection.recv(65536)
        seconds = time.monotonic() - start
    head = reply.decode("latin-1").partition("\r\n\r\n")[0]
    return int(head.split()[1]), head, seconds


def still_answers(client: Client, tmp_path: Path) -> bool:
    tokens, _, _ = ask(client, write_image(tmp_path / "ok.png"), phrases="red circle")
    return [t["token"] for t in tokens if t["class_or_confidence"]] == ["red circle"]


def test_a_100_gb_upload_gets_413_after_the_limit_not_the_body(url, client, tmp_path):
    head = (
        "POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000000000\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
    )
    part = b'--x\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n\r\n'
    status, response, seconds = exchange(url, head, part, then=b"\0" * (2 * LIMITS.max_upload_bytes))
    assert status == 413 and seconds < 10, (response, seconds)
    assert still_answers(client, tmp_path)


@pytest.mark.parametrize(
    ("question", "phrases", "message"),
    [
        ("what?", "x" * 61, "the phrases field is longer than the limit of 60 characters"),
        ("", "a; b; c; d", "the phrases field has 4 phrases, more than the limit of 3"),
        ("x" * 201, "", "the question is longer than the limit of 200 characters"),
        ("   ", " ; ", "the question is empty (ask something, or give phrases to ground)"),
    ],
    ids=["phrases-chars", "phrases-count", "question-chars", "nothing-asked"],
)
def test_oversized_or_empty_fields_get_their_message(client, tmp_path, question, phrases, message):
    with pytest.raises(AppError) as refused:
        ask(client, write_image(tmp_path / "ok.png"), question, phrases)
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not an image", "the upload is not an image that can be read (PNG, JPEG, ...)"),
        (b"", "the upload is not an image that can be read (PNG, JPEG, ...)"),
        (png_header(30_000, 30_000), "the image has more pixels than the limit of 40000"),  # PIL's bomb
        (png_header(300, 300), "the image has 300x300 pixels, more than the limit of 40000"),
        (png_header(64, 48), "the upload is not an image that can be read (PNG, JPEG, ...)"),  # no pixels
    ],
    ids=["text", "empty", "decompression-bomb", "too-many-pixels", "truncated"],
)
def test_bad_images_get_their_message(client, tmp_path, content, message):
    (tmp_path / "bad.png").write_bytes(content)
    with pytest.raises(AppError) as refused:
        ask(client, tmp_path / "bad.png")
    assert str(refused.value) == message


@pytest.mark.parametrize(
    ("mode", "style", "message"),
    [
        ("trained-head", "plain", "the mode must be one of ['attend-and-segment'], not 'trained-head'"),
        (
            "attend-and-segment",
            "html",
            "the output format must be one of ['plain', 'kosmos', 'glamm'], not 'html'",
        ),
    ],
    ids=["mode-not-served", "unknown-format"],
)
def test_values_outside_the_pages_choices_are_refused(client, tmp_path, mode, style, message):
    with pytest.raises(AppError) as refused:
        ask(client, write_image(tmp_path / "ok.png"), mode=mode, style=style)
    assert str(refused.value) == message


def test_foreign_host_names_are_refused(url):
    port = url.rstrip("/").rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", f"127.0.0.1.evil.example:{port}"):
        assert exchange(url, f"GET / HTTP/1.1\r\nHost: {host}\r\n")[0] == 400, host
    for host in ("localhost", f"localhost:{port}", f"127.0.0.1:{port}"):
        assert exchange(url, f"GET / HTTP/1.1\r\nHost: {host}\r\n")[0] == 200, host


def test_another_site_cannot_ask_from_the_users_browser(url):
    """A page of another site may send only "simple" requests without asking (a preflight); the queue
    takes JSON alone, and the preflight grants no other origin."""
    body = json.dumps({"data": [None, "q", "a", "attend-and-segment", "plain"], "fn_index": 0}).encode()
    simple = (
        f"POST /gradio_api/queue/join HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: http://evil.example\r\n"
        f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    )
    assert exchange(url, simple, body)[0] == 422  # not queued
    preflight = (
        "OPTIONS /gradio_api/queue/join HTTP/1.1\r\nHost: 127.0.0.1\r\nOrigin: {}\r\n"
        "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n"
    )
    _, foreign, _ = exchange(url, preflight.format("http://evil.example"))
    _, own, _ = exchange(url, preflight.format(url.rstrip("/")))
    assert "access-control-allow-origin" not in foreign.lower()
    assert f"access-control-allow-origin: {url.rstrip('/')}" in own.lower()


def test_one_question_runs_at_a_time_and_a_full_queue_is_refused(client, demo, tmp_path):
    image = write_image(tmp_path / "ok.png")
    demo.delay_s, demo.most_at_once = 0.5, 0
    jobs = [
        client.submit(handle_file(image), "", "red circle", "attend-and-segment", "plain", api_name="/ask")
        for _ in range(6)
    ]
    wait(jobs, timeout=60)
    refused = [job for job in jobs if job.exception() is not None]
    assert demo.most_at_once == 1
    assert refused and all("queue is full" in str(job.exception()).lower() for job in refused)
    assert len(jobs) - len(refused) <= 1 + LIMITS.max_queue


def test_a_model_failure_shows_a_generic_message_and_the_app_serves_on(client, demo, tmp_path, caplog):
    demo.failing = True
    with caplog.at_level(logging.ERROR, logger="flmm.demo"), pytest.raises(AppError) as failed:
        ask(client, write_image(tmp_path / "ok.png"), phrases="red circle")
    assert str(failed.value) == INTERNAL_ERROR
    assert any(r.exc_info and SECRET in str(r.exc_info[1]) for r in caplog.records), "no traceback logged"
    demo.failing = False
    assert still_answers(client, tmp_path)
