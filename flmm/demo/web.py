"""A small localhost page for the demo: upload an image, ask, see the answer and the overlay.

Standard library only (`http.server`), bound to 127.0.0.1. `GET /` is the form; `POST /ask` (multipart
form: `image`, `question`, optional `phrases` "a; b") answers with the same page, the answer with its
grounded phrases coloured as in the overlay, and the overlay inline (`<img id="overlay">`, a PNG data URL).
A bad request gets its message in the page (`<p id="error">`) with a 4xx status; an error inside the model
gets a 500 page with a generic sentence (the traceback goes to the log, never to the page); the server keeps
serving either way. One question runs at a time; every connection carries one request and is then closed.

Limits, for a page that any local process or web site in the browser can reach:
- `ConnectionLimits`: a client has `timeout_s` (30) seconds for its headers and body together and again
  for reading the answer, then its connection is closed; at most `max_connections` (8) are served at
  once, and one beyond that gets 503 from the accepting thread, which starts no thread for it.
- `UploadLimits`: the body (`max_upload_bytes`, 10 MiB) is refused with 413 from its Content-Length,
  none of it read; no Content-Length or a chunked body gets 411. The form may have `max_parts` (8)
  parts, a file name `max_filename_chars` (255), the question `max_question_chars` (2000), the phrases
  field `max_phrases_chars` (1000) and `max_phrases` (16) phrases; the image `max_pixels` (4096 x 4096),
  checked from its header before decoding. Header lines and their count keep `http.server`'s caps
  (64 KiB a line, 100 headers).
- Host must be a localhost name (127.0.0.1, localhost, [::1], with or without the server's port), else
  421: a DNS-rebinding page cannot reach the model. A POST whose Origin is not the server's own is
  refused with 403, so another site cannot post the form from the user's browser.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from flmm.data.overlay import PALETTE
from flmm.demo.answer import GenerationSettings
from flmm.demo.output import render_overlay
from flmm.demo.pipeline import Demo, DemoResult
from flmm.demo.web_form import (
    BadRequest,
    UploadLimits,
    decode_image,
    parse_form,
    phrases_field,
    text_field,
)

log = logging.getLogger("flmm.demo")

HOST = "127.0.0.1"
LOCAL_NAMES = ("127.0.0.1", "localhost", "[::1]")
INTERNAL_ERROR = "internal error; see the server log"
PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>flmm demo</title>
<style>body{{font-family:sans-serif;max-width:52em;margin:2em auto}} #error{{color:#b00}}
mark{{color:#fff;padding:0 .2em}} img{{max-width:100%}}</style></head>
<body><h1>Ask the frozen LMM</h1>
<form method="post" action="/ask" enctype="multipart/form-data">
<p><input type="file" name="image" accept="image/*" required></p>
<p><input type="text" name="question" size="60" placeholder="What is the red object?"></p>
<p><input type="text" name="phrases" size="60" placeholder="optional: phrases to ground, a; b"></p>
<p><button type="submit" id="ask">Ask</button></p></form>
{body}
</body></html>
"""


@dataclass(frozen=True)
class ConnectionLimits:
    """Seconds a client has to send its whole request (and again to read the answer), and how many
    connections are served at once."""

    timeout_s: float = 30.0
    max_connections: int = 8

    def __post_init__(self):
        if not self.timeout_s > 0:
            raise ValueError(f"the connection timeout must be positive, not {self.timeout_s}")
        if self.max_connections < 1:
            raise ValueError(f"at least one connection must be allowed, not {self.max_connections}")


def local_hosts(port: int) -> frozenset[str]:
    """The Host header values that name this server: a localhost name, with or without its port."""
    return frozenset([*LOCAL_NAMES, *(f"{name}:{port}" for name in LOCAL_NAMES)])


def local_origins(port: int) -> frozenset[str]:
    """The origins of the server's own page (a browser leaves port 80 out of an origin)."""
    origins = {f"http://{name}:{port}" for name in LOCAL_NAMES}
    if port == 80:
        origins |= {f"http://{name}" for name in LOCAL_NAMES}
    return frozenset(origins)


def result_html(result: DemoResult, image: np.ndarray) -> str:
    """The answer with its phrases coloured as in the overlay, and the overlay as an inline PNG."""
    pieces, cursor = [], 0
    for index in sorted(range(len(result.phrases)), key=lambda i: result.phrases[i].span):
        start, end = result.phrases[index].span
        colour = "#{:02x}{:02x}{:02x}".format(*PALETTE[index % len(PALETTE)])
        pieces += [
            html.escape(result.text[cursor:start]),
            f'<mark style="background:{colour}">{html.escape(result.text[start:end])}</mark>',
        ]
        cursor = end
    grounded = "".join([*pieces, html.escape(result.text[cursor:])])
    buffer = io.BytesIO()
    render_overlay(result, image).save(buffer, format="PNG")
    overlay = base64.b64encode(buffer.getvalue()).decode("ascii")
    parts = []
    if result.question is not None:
        parts.append(f'<p><b>Q:</b> <span id="question">{html.escape(result.question)}</span></p>')
        parts.append(f'<p><b>A:</b> <span id="answer">{html.escape(result.answer or "")}</span></p>')
    parts.append(
        f'<p><b>Grounded ({result.source}, {result.mode}):</b> <span id="grounded">{grounded}</span></p>'
    )
    parts.append(f'<p><img id="overlay" alt="overlay" src="data:image/png;base64,{overlay}"></p>')
    return "\n".join(parts)


class DeadlineReader(io.RawIOBase):
    """Reads a socket until one deadline for all reads together: a timeout per read alone would let a
    client that sends a byte now and then (slowloris) hold its thread for ever."""

    def __init__(self, connection: socket.socket, seconds: float):
        self.connection, self.deadline = connection, time.monotonic() + seconds

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive in time")
        self.connection.settimeout(remaining)
        return self.connection.recv_into(buffer)


def busy_response() -> bytes:
    """The whole 503 answer to a connection beyond the limit, sent without reading its request."""
    page = PAGE.format(body='<p id="error">the server is busy; try again in a few seconds</p>').encode()
    head = (
        "HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(page)}\r\nRetry-After: 5\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + page


class LimitedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with at most `max_connections` handler threads: a connection beyond them is
    answered 503 by the accepting thread and closed, so stalled clients cannot pile up threads."""

    def __init__(self, address: tuple[str, int], handler: type, max_connections: int):
        self.slots = threading.BoundedSemaphore(max_connections)
        self.busy = busy_response()
        super().__init__(address, handler)

    def process_request(self, request: socket.socket, client_address) -> None:
        if not self.slots.acquire(blocking=False):
            # Non-blocking, so a client that reads nothing cannot stall the accepting thread; the answer
            # fits an empty socket buffer, and a failed send leaves the close as the answer.
            request.setblocking(False)
            with contextlib.suppress(OSError):
                request.send(self.busy)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()  # no thread started, so none will give the slot back
            raise

    def process_request_thread(self, request: socket.socket, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request: socket.socket, client_address) -> None:
        # To the log, not socketserver's print to stderr: a client that hangs up mid-answer ends here.
        log.warning("connection from %s failed", client_address[0], exc_info=True)


def make_server(
    demo: Demo,
    port: int = 0,
    settings: GenerationSettings | None = None,
    limits: UploadLimits | None = None,
    connections: ConnectionLimits | None = None,
) -> ThreadingHTTPServer:
    """A server for `demo` on 127.0.0.1:`port` (0: any free port, see `server.server_port`); call
    `serve_forever()` on it."""
    settings, limits = settings or GenerationSettings(), limits or UploadLimits()
    connections = connections or ConnectionLimits()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def setup(self) -> None:
            super().setup()
            self.rfile.close()  # replaced by one that keeps the request's deadline
            self.rfile = io.BufferedReader(DeadlineReader(self.connection, connections.timeout_s))

        def do_GET(self) -> None:
            self._respond(self._form)

        def do_POST(self) -> None:
            self._respond(self._answer)

        def _respond(self, build) -> None:
            """Send the page `build()` returns, or the page of what went wrong."""
            try:
                self._check_host()
                status, body = 200, build()
            except BadRequest as exc:
                status, body = exc.status, f'<p id="error">{html.escape(str(exc))}</p>'
            except (TimeoutError, ConnectionError):
                raise  # the client is too slow or gone: http.server closes the connection
            except Exception:  # a failure inside the model must not take the page down, nor show its text
                log.exception("demo request failed")
                status, body = 500, f'<p id="error">{INTERNAL_ERROR}</p>'
            self._send(status, PAGE.format(body=body))

        def _check_host(self) -> None:
            # A DNS-rebinding page reaches 127.0.0.1 under its own name, which it cannot hide from Host.
            hosts = self.headers.get_all("Host") or []
            if len(hosts) != 1 or hosts[0].strip().lower() not in local_hosts(self.server.server_port):
                raise BadRequest("this server answers only to localhost names in the Host header", 421)

        def _check_origin(self) -> None:
            # Browsers send Origin on every cross-site POST; requests from tools, without it, stay allowed.
            origin = self.headers.get("Origin")
            if origin is not None and origin.strip().lower() not in local_origins(self.server.server_port):
                raise BadRequest("a form posted from another site (the Origin header) is refused", 403)

        def _form(self) -> str:
            if self.path.split("?")[0] != "/":
                raise BadRequest("not found", 404)
            return ""

        def _answer(self) -> str:
            if self.path != "/ask":
                raise BadRequest("not found", 404)
            self._check_origin()
            fields = parse_form(self.headers.get("Content-Type", ""), self._read_body(), limits)
            question = text_field(fields, "question", limits.max_question_chars)
            phrases = phrases_field(fields, limits)
            if not question and not phrases:
                raise BadRequest("the question is empty (ask something, or give phrases to ground)")
            image = decode_image(fields.get("image", b""), limits.max_pixels)
            with lock:
                try:
                    result = demo.run(image, question or None, phrases or None, settings)
                except ValueError as exc:  # the input, e.g. a phrase that covers no token
                    raise BadRequest(str(exc)) from None
            return result_html(result, image)

        def _read_body(self) -> bytes:
            """The request body, its length checked before any of it is read: a refused body stays
            unread, and the connection is closed after the answer."""
            if "Transfer-Encoding" in self.headers:
                raise BadRequest("a chunked upload is not accepted; send a Content-Length", 411)
            lengths = self.headers.get_all("Content-Length") or []
            if len(lengths) > 1:
                raise BadRequest("the request has more than one Content-Length header")
            value = lengths[0].strip() if lengths else ""
            if not re.fullmatch(
                r"-?[0-9]{1,20}", value
            ):  # int() would also take "1_000" and non-ASCII digits
                raise BadRequest("the request has no valid Content-Length header", 411)
            length = int(value)
            if length < 0:
                raise BadRequest(f"the Content-Length {length} is negative")
            if length > limits.max_upload_bytes:
                raise BadRequest(
                    f"the upload is {length} bytes, more than the limit of {limits.max_upload_bytes}", 413
                )
            body = self.rfile.read(length)
            if len(body) < length:
                raise BadRequest(f"the upload ended after {len(body)} of its {length} bytes")
            return body

        def _send(self, status: int, page: str) -> None:
            data = page.encode("utf-8")
            # The answer gets its own time: the reads may have left the socket's timeout nearly spent.
            self.connection.settimeout(connections.timeout_s)
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return LimitedServer((HOST, port), Handler, connections.max_connections)
