"""The demo page's request form, read within limits: multipart fields, text fields, the uploaded image.

`UploadLimits` says what one request may hold; every reader raises `BadRequest` (a message for the page and
an HTTP status) instead of reading past a limit.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import HTTP

import numpy as np
from PIL import Image, UnidentifiedImageError

from flmm.demo.phrases import parse_phrase_list

MAX_BOUNDARY_CHARS = 70  # RFC 2046


@dataclass(frozen=True)
class UploadLimits:
    """What one request may hold: body bytes, image pixels, form parts and the size of each field."""

    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 4096 * 4096
    max_question_chars: int = 2000
    max_phrases_chars: int = 1000
    max_phrases: int = 16
    max_parts: int = 8
    max_filename_chars: int = 255


class BadRequest(Exception):
    """A request the page refuses, with the message shown to the user and the HTTP status."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def parse_headers(lines: bytes) -> EmailMessage:
    """Header lines (without the blank line that ends them) -> a message to read their parameters from."""
    return BytesParser(policy=HTTP).parsebytes(lines + b"\r\n\r\n", headersonly=True)


def form_boundary(content_type: str) -> bytes:
    """The boundary of a multipart/form-data Content-Type; BadRequest for any other type."""
    header = parse_headers(b"Content-Type: " + content_type.encode("latin-1"))
    if header.get_content_type() != "multipart/form-data":
        raise BadRequest("the form must be sent as multipart/form-data")
    boundary = header.get_boundary() or ""
    if not 0 < len(boundary) <= MAX_BOUNDARY_CHARS:
        raise BadRequest(f"the form's boundary is missing or longer than {MAX_BOUNDARY_CHARS} characters")
    return boundary.encode("latin-1")


def parse_form(content_type: str, body: bytes, limits: UploadLimits) -> dict[str, bytes]:
    """A multipart/form-data body -> {field name: raw bytes}; BadRequest for more than `limits.max_parts`
    parts or a file name longer than `limits.max_filename_chars`.

    Split by hand, at most `max_parts` + 1 times, so a body of many (or nested) parts costs no more than
    the limit allows; browsers send neither transfer encodings nor nested parts, so none is decoded.
    """
    # A delimiter is CRLF "--" boundary; the body's first one has no CRLF before it, so one is added.
    sections = (b"\r\n" + body).split(b"\r\n--" + form_boundary(content_type), limits.max_parts + 1)
    # sections: the preamble, one per part, then the close ("--" and the epilogue).
    if not sections[-1].startswith(b"--"):
        if len(sections) == limits.max_parts + 2:
            raise BadRequest(f"the form has more than {limits.max_parts} parts")
        raise BadRequest("the form data could not be read (it does not end with its boundary)")
    fields = {}
    for section in sections[1:-1]:
        head, found, payload = section.partition(b"\r\n\r\n")
        if not found:
            raise BadRequest("the form data could not be read (a part has no end of its headers)")
        # The delimiter line may end with spaces (RFC 2046) before its CRLF, which starts `head`.
        part = parse_headers(head.lstrip(b" \t").removeprefix(b"\r\n"))
        filename = part.get_filename() or ""
        if len(filename) > limits.max_filename_chars:
            raise BadRequest(
                f"the file name is longer than the limit of {limits.max_filename_chars} characters"
            )
        name = part.get_param("name", header="content-disposition")
        if name:
            fields[name] = payload
    return fields


def text_field(fields: dict[str, bytes], name: str, max_chars: int) -> str:
    """Form field `name` as text without its edge whitespace; BadRequest when over `max_chars`."""
    text = fields.get(name, b"").decode("utf-8", "replace").strip()
    if len(text) > max_chars:
        raise BadRequest(f"the {name} field is longer than {max_chars} characters")
    return text


def phrases_field(fields: dict[str, bytes], limits: UploadLimits) -> list[str]:
    """The `phrases` field ("a; b") as a list; BadRequest when too long or naming too many phrases."""
    phrases = parse_phrase_list(text_field(fields, "phrases", limits.max_phrases_chars))
    if len(phrases) > limits.max_phrases:
        raise BadRequest(
            f"the phrases field has {len(phrases)} phrases, more than the limit of {limits.max_phrases}"
        )
    return phrases


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
