"""The demo's web server against hostile clients: stalled and trickling connections, more connections than
its cap, a 100 GB upload, oversized form fields, foreign Host and Origin headers, and a model that raises.

Every test gets a fresh server (short timeout, small cap) on one toy Demo shared by the module, so no test
inherits another's stalled connections. Every client socket has a timeout, so no test can hang.
"""

from __future__ import annotations

import contextlib
import io
import logging
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from flmm.demo.answer import GenerationSettings
from flmm.demo.pipeline import Demo
from flmm.demo.web import INTERNAL_ERROR, ConnectionLimits, UploadLimits, make_server
from tests.conftest import TOY_CONFIG, build_toy_world, toy_overrides

TIMEOUT_S = 2.0
CAP = 4
TRICKLE_S = 0.3
MARGIN_S = 1.5  # what a loaded two-core machine may add to the server's timeout before the close is seen
CLIENT_TIMEOUT_S = 8.0  # a client never waits longer than this for one socket operation
LIMITS = UploadLimits(
    max_upload_bytes=300_000,
    max_pixels=200 * 200,
    max_question_chars=200,
    max_phrases_chars=60,
    max_phrases=3,
    max_parts=5,
    max_filename_chars=40,
)
SECRET = "secret detail /home/someone/weights.bin"


class FlakyDemo:
    """A Demo whose `run` raises RuntimeError(SECRET) while `failing` is set."""

    def __init__(self, demo: Demo):
        self.demo, self.failing = demo, False

    def run(self, *args, **kwargs):
        if self.failing:
            raise RuntimeError(SECRET)
        return self.demo.run(*args, **kwargs)


@dataclass
class Served:
    port: int
    demo: FlakyDemo


@pytest.fixture(scope="module")
def flaky_demo(tmp_path_factory) -> FlakyDemo:
    root = tmp_path_factory.mktemp("web_hostile")
    world = build_toy_world(root)
    return FlakyDemo(Demo.from_config(TOY_CONFIG, toy_overrides(world, root / "run"), device="cpu"))


@pytest.fixture
def served(flaky_demo):
    flaky_demo.failing = False
    connections = ConnectionLimits(timeout_s=TIMEOUT_S, max_connections=CAP)
    server = make_server(flaky_demo, 0, GenerationSettings(max_new_tokens=4), LIMITS, connections)
    # A short poll interval: shutdown() waits for one, and every test starts and stops a server.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield Served(server.server_port, flaky_demo)
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(
        buffer, format="PNG"
    )
    return buffer.getvalue()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT_S)


def read_to_close(connection: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts as the close)."""
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def split_reply(reply: bytes) -> tuple[int, str, str]:
    """A raw HTTP reply -> (status, header block, page)."""
    head, _, page = reply.decode("utf-8", "replace").partition("\r\n\r\n")
    return int(head.split()[1]), head, page


def exchange(port: int, data: bytes) -> tuple[int, str, str]:
    """Send `data` on a new connection and read the reply to the close."""
    with connect(port) as connection:
        connection.sendall(data)
        return split_reply(read_to_close(connection))


def get(port: int, host: str | None = None) -> int:
    host = f"127.0.0.1:{port}" if host is None else host
    return exchange(port, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())[0]


def form(fields: list[tuple[str, bytes, str]]) -> tuple[str, bytes]:
    """(name, value, extra disposition) triples -> (Content-Type, multipart/form-data body)."""
    boundary = uuid.uuid4().hex
    body = io.BytesIO()
    for name, value, extra in fields:
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{extra}\r\n\r\n'.encode())
        body.write(value + b"\r\n")
    body.write(f"--{boundary}--\r\n".encode())
    return f"multipart/form-data; boundary={boundary}", body.getvalue()


def ask(port: int, image: bytes, question: str = "", phrases: str = "", headers: str = "", extra=()):
    """POST /ask with the three fields (and `extra` ones); the status and the page."""
    fields = [("image", image, '; filename="x.png"'), ("question", question.encode(), "")]
    content_type, body = form([*fields, ("phrases", phrases.encode(), ""), *extra])
    head = (
        f"POST /ask HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n{headers}\r\n"
    )
    status, _, page = exchange(port, head.encode() + body)
    return status, page


def close_times(connections: list[socket.socket], opened_at: float, trickling=()) -> list[float]:
    """Seconds from `opened_at` until the server closed each of `connections`, none answered; meanwhile each
    of `trickling` sends one more header byte every TRICKLE_S, as a slowloris client does to dodge a
    per-read timeout."""
    closed = {}
    while len(closed) < len(connections):
        assert time.monotonic() - opened_at < CLIENT_TIMEOUT_S, "the server kept a stalled connection open"
        readable, _, _ = select.select([c for c in connections if c not in closed], [], [], TRICKLE_S)
        for connection in readable:
            assert read_to_close(connection) == b""
            closed[connection] = time.monotonic() - opened_at
        for connection in set(trickling) - set(closed):
            with contextlib.suppress(OSError):  # the server may close it between the select and the send
                connection.sendall(b"a")
    return [closed[c] for c in connections]


def stalled(port: int) -> socket.socket:
    """A connection that sent half of its headers and then nothing."""
    connection = connect(port)
    connection.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-Slow: ".encode())
    return connection


def test_slowloris_connections_are_closed_by_the_deadline_and_others_are_served(served):
    with contextlib.ExitStack() as stack:
        opened_at = time.monotonic()
        silent = [stack.enter_context(stalled(served.port)) for _ in range(2)]
        trickling = stack.enter_context(stalled(served.port))
        assert get(served.port) == 200  # the fourth slot still serves while three stall
        closes = close_times([*silent, trickling], opened_at, trickling=[trickling])
    # Closed at the deadline, not before it; the trickling one too, though its bytes keep arriving.
    assert all(TIMEOUT_S - 0.1 < s < TIMEOUT_S + MARGIN_S for s in closes), closes
    assert get(served.port) == 200


def test_connections_beyond_the_cap_get_503_until_the_stalled_ones_time_out(served):
    request = f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n\r\n".encode()
    with contextlib.ExitStack() as stack:
        opened_at = time.monotonic()
        holders = [stack.enter_context(stalled(served.port)) for _ in range(CAP)]
        for _ in range(3):
            started = time.monotonic()
            status, _, page = exchange(served.port, request)
            assert (status, "busy" in page) == (503, True)
            assert time.monotonic() - started < 1.0  # answered at once, not after a timeout
        closes = close_times(holders, opened_at)
    assert all(s < TIMEOUT_S + MARGIN_S for s in closes), closes
    # The slots come back as the stalled threads end, a moment after their connections close.
    deadline = time.monotonic() + MARGIN_S
    while get(served.port) != 200:
        assert time.monotonic() < deadline, "the server did not serve again after the stalled clients"
        time.sleep(0.05)


@pytest.mark.parametrize("body_sent", [0, 65536], ids=["headers-only", "body-started"])
def test_a_100_gb_upload_gets_413_before_its_body_is_read(served, body_sent):
    head = (
        f"POST /ask HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 100000000000\r\n\r\n"
    )
    with connect(served.port) as connection:
        start = time.monotonic()
        connection.sendall(head.encode() + b"\0" * body_sent)
        status, headers, page = split_reply(read_to_close(connection))
        seconds = time.monotonic() - start
        assert (status, "more than the limit of 300000" in page) == (413, True)
        assert "Connection: close" in headers
        assert seconds < 1.0, seconds  # neither the body nor the timeout was waited for
        # Nobody reads the rest of the body: sending it fails instead of flowing into the server.
        with pytest.raises(OSError):
            for _ in range(256):  # 16 MiB, far beyond what the socket buffers hold
                connection.sendall(b"\0" * 65536)
    assert get(served.port) == 200


@pytest.mark.parametrize(
    ("headers", "status", "message"),
    [
        ("Transfer-Encoding: chunked\r\n", 411, "chunked upload is not accepted"),
        ("Content-Length: 10\r\nContent-Length: 20\r\n", 400, "more than one Content-Length"),
        ("Content-Length: 1_000\r\n", 411, "no valid Content-Length"),
    ],
    ids=["chunked", "two-lengths", "underscored-digits"],
)
def test_a_body_without_one_plain_length_is_refused_unread(served, headers, status, message):
    head = f"POST /ask HTTP/1.1\r\nHost: 127.0.0.1:{served.port}\r\n{headers}\r\n"
    start = time.monotonic()
    code, _, page = exchange(served.port, head.encode())
    assert (code, message in page) == (status, True), page
    assert time.monotonic() - start < 1.0  # refused before any body was waited for


@pytest.mark.parametrize(
    ("question", "phrases", "extra", "message"),
    [
        ("what?", "x" * 61, (), "the phrases field is longer than 60 characters"),
        ("", "a; b; c; d", (), "the phrases field has 4 phrases, more than the limit of 3"),
        ("x" * 201, "", (), "the question field is longer than 200 characters"),
        ("what?", "", [(f"extra{i}", b"1", "") for i in range(3)], "the form has more than 5 parts"),
        (
            "what?",
            "",
            [("doc", b"1", f'; filename="{"n" * 41}.txt"')],
            "file name is longer than the limit of 40",
        ),
    ],
    ids=["phrases-chars", "phrases-count", "question-chars", "parts", "filename"],
)
def test_oversized_fields_get_400_naming_the_field_and_limit(served, png, question, phrases, extra, message):
    status, page = ask(served.port, png, question, phrases, extra=extra)
    assert (status, message in page) == (400, True), page


def test_foreign_host_names_are_refused(served):
    port = served.port
    for host in ("evil.example", f"evil.example:{port}", "localhost:1", f"127.0.0.1.evil.example:{port}"):
        status, _, page = exchange(port, f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
        assert (status, "localhost names" in page) == (421, True), host
    assert exchange(port, b"GET / HTTP/1.0\r\n\r\n")[0] == 421  # no Host at all
    post = "POST /ask HTTP/1.1\r\nHost: evil.example\r\nContent-Length: 100000000000\r\n\r\n"
    assert exchange(port, post.encode())[0] == 421  # before the body's size is even looked at
    for host in ("localhost", f"localhost:{port}", "LocalHost", f"127.0.0.1:{port}", f"[::1]:{port}"):
        assert get(port, host) == 200, host


def test_cross_site_posts_get_403_and_same_origin_ones_are_answered(served, png):
    port = served.port
    for origin in (
        "http://evil.example",
        "null",
        f"http://127.0.0.1:{port + 1}",
        f"https://localhost:{port}",
    ):
        status, page = ask(port, png, phrases="red circle", headers=f"Origin: {origin}\r\n")
        assert (status, "another site" in page) == (403, True), origin
    status, page = ask(port, png, phrases="red circle", headers=f"Origin: http://localhost:{port}\r\n")
    assert status == 200 and 'id="overlay"' in page


def test_a_model_failure_gets_a_generic_500_and_the_server_keeps_serving(served, png, caplog):
    served.demo.failing = True
    with caplog.at_level(logging.ERROR, logger="flmm.demo"):
        status, page = ask(served.port, png, phrases="red circle")
    assert (status, INTERNAL_ERROR in page) == (500, True)
    assert SECRET not in page and "RuntimeError" not in page
    logged = [r for r in caplog.records if r.exc_info and SECRET in str(r.exc_info[1])]
    assert logged, "the traceback was not logged"
    served.demo.failing = False
    assert get(served.port) == 200
    status, page = ask(served.port, png, phrases="red circle")
    assert status == 200 and 'id="overlay"' in page
