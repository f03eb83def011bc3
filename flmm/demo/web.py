"""A small localhost page for the demo: upload an image, ask, see the answer and the overlay.

Standard library only (`http.server`), bound to 127.0.0.1. `GET /` is the form; `POST /ask` (multipart
form: `image`, `question`, optional `phrases` "a; b") answers with the same page, the answer with its
grounded phrases coloured as in the overlay, and the overlay inline (`<img id="overlay">`, a PNG data URL).
Input limits: upload size (`max_upload_bytes`, checked against Content-Length before reading), image pixels
(`max_pixels`, checked from the header before decoding) and question length. A bad request (not an image,
too big, empty question) gets its message in the page (`<p id="error">`) with a 4xx status; an error inside
the model gets a 500 page; the server keeps serving either way. One question runs at a time.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import threading
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image, UnidentifiedImageError

from flmm.data.overlay import PALETTE
from flmm.demo.answer import GenerationSettings
from flmm.demo.output import render_overlay
from flmm.demo.phrases import parse_phrase_list
from flmm.demo.pipeline import Demo, DemoResult

log = logging.getLogger("flmm.demo")

HOST = "127.0.0.1"
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
class UploadLimits:
    """Largest request body (bytes), image (pixels) and question (characters) the page accepts."""

    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 4096 * 4096
    max_question_chars: int = 2000


class BadRequest(Exception):
    """A request the page refuses, with the message shown to the user and the HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_form(content_type: str, body: bytes) -> dict[str, bytes]:
    """A multipart/form-data body -> {field name: raw bytes}."""
    if not content_type.startswith("multipart/form-data"):
        raise BadRequest("the form must be sent as multipart/form-data")
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        raise BadRequest("the form data could not be read")
    fields = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = part.get_payload(decode=True) or b""
    return fields


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """Uploaded bytes -> `(H, W, 3)` uint8 RGB; BadRequest when empty, not an image, or too large."""
    if not data:
        raise BadRequest("no image was uploaded")
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise BadRequest(
                    f"the image has {width}x{height} pixels, more than the limit of {max_pixels}"
                )
            return np.array(image.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError:  # PIL's own limit, met before the header check above can run
        raise BadRequest(f"the image has more pixels than the limit of {max_pixels}") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise BadRequest("the upload is not an image that can be read (PNG, JPEG, ...)") from None


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


def make_server(
    demo: Demo,
    port: int = 0,
    settings: GenerationSettings | None = None,
    limits: UploadLimits | None = None,
) -> ThreadingHTTPServer:
    """A server for `demo` on 127.0.0.1:`port` (0: any free port, see `server.server_port`); call
    `serve_forever()` on it."""
    settings, limits = settings or GenerationSettings(), limits or UploadLimits()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.split("?")[0] != "/":
                self._send(404, PAGE.format(body='<p id="error">not found</p>'))
                return
            self._send(200, PAGE.format(body=""))

        def do_POST(self) -> None:
            try:
                self._send(200, PAGE.format(body=self._answer()))
            except BadRequest as exc:
                self._send(exc.status, PAGE.format(body=f'<p id="error">{html.escape(str(exc))}</p>'))
            except Exception as exc:  # a failure inside the model must not take the page down
                log.exception("demo request failed")
                message = html.escape(f"{type(exc).__name__}: {exc}")
                self._send(500, PAGE.format(body=f'<p id="error">internal error: {message}</p>'))

        def _answer(self) -> str:
            if self.path != "/ask":
                raise BadRequest("not found", 404)
            try:
                length = int(self.headers.get("Content-Length") or "")
            except ValueError:
                raise BadRequest("the request has no valid Content-Length header", 411) from None
            if length < 0:
                raise BadRequest(f"the Content-Length {length} is negative")
            if length > limits.max_upload_bytes:
                self._discard(length)
                raise BadRequest(
                    f"the upload is {length} bytes, more than the limit of {limits.max_upload_bytes}", 413
                )
            fields = parse_form(self.headers.get("Content-Type", ""), self.rfile.read(length))
            question = fields.get("question", b"").decode("utf-8", "replace").strip()
            phrases = parse_phrase_list(fields.get("phrases", b"").decode("utf-8", "replace"))
            if not question and not phrases:
                raise BadRequest("the question is empty (ask something, or give phrases to ground)")
            if len(question) > limits.max_question_chars:
                raise BadRequest(f"the question is longer than {limits.max_question_chars} characters")
            image = decode_image(fields.get("image", b""), limits.max_pixels)
            with lock:
                try:
                    result = demo.run(image, question or None, phrases or None, settings)
                except ValueError as exc:  # the input, e.g. a phrase that covers no token
                    raise BadRequest(str(exc)) from None
            return result_html(result, image)

        def _discard(self, length: int) -> None:
            # Read the refused body so the browser gets the answer, not a reset connection.
            while length > 0:
                chunk = self.rfile.read(min(length, 2**20))
                if not chunk:
                    break
                length -= len(chunk)

        def _send(self, status: int, page: str) -> None:
            data = page.encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args) -> None:
            log.info("%s %s", self.address_string(), format % args)

    return ThreadingHTTPServer((HOST, port), Handler)
