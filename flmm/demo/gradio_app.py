"""The demo as a Gradio app: upload an image, ask, see the answer with its grounded phrases coloured and their
masks over the image.

`build_app(demos, limits, settings)` makes the page (`gr.Blocks`); `launch(app, limits, ...)` serves it and
returns its URL. Inputs: the image, the question, optional phrases ("a; b"), the mode (only those of the
Demos given: trained head, attend-and-segment) and the output format (plain / Kosmos-2 / GLaMM, see
`flmm.demo.phrases`). Outputs: the grounded text with phrase i labelled `#i` in `PALETTE[i]`, the overlay's
colours (`gr.HighlightedText`); the image with phrase i's mask in the same colour (`gr.AnnotatedImage`;
through the API, one RGBA PNG per mask whose alpha is the mask); the answer in the chosen format. API:
`gradio_client.Client(url).predict(image, question, phrases, mode, style, api_name="/ask")`.

Nothing leaves the machine unless asked: the server listens on 127.0.0.1, answers there only to the Host
names 127.0.0.1 and localhost (a DNS-rebinding page cannot reach it) and makes no share link by default;
analytics are off (the environment variable is set before gradio is imported, which gradio's launch
and error reports and gradio_client read, and the Blocks gets `analytics_enabled=False`); the theme uses
the system's font stacks (no Google Fonts); no server-side rendering (node), MCP server, monitoring page
or run history in the browser.

Limits (`WebLimits`, those of the page this app replaced): a file of `max_upload_bytes` (10 MiB, refused by
gradio's upload route, and by the page before sending), an image of `max_pixels` (4096 x 4096, read from
its header before it is decoded), a question of `max_question_chars` (2000), a phrases field of
`max_phrases_chars` (1000) naming at most `max_phrases` (16) phrases. A bad input shows its message; an
error inside the model shows a generic one (the traceback goes to the log); the app serves on either way.
One question runs at a time, through gradio's queue; at most `max_queue` (16) wait behind it, more are told
that the queue is full.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass

# Before gradio is imported, so nothing of it runs with analytics on: besides the Blocks' own argument, its
# launch and error reports and gradio_client's Client read this variable.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"

import gradio as gr
import numpy as np
from PIL import Image
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from flmm.data.image_io import load_rgb
from flmm.data.overlay import PALETTE
from flmm.demo.answer import GenerationSettings
from flmm.demo.output import format_answer
from flmm.demo.phrases import TEXT_FORMATS, parse_phrase_list
from flmm.demo.pipeline import Demo, DemoResult
from flmm.errors import DataError

log = logging.getLogger("flmm.demo")

HOST = "127.0.0.1"
LOCAL_NAMES = ("127.0.0.1", "localhost")
INTERNAL_ERROR = "internal error; see the server log"
MODE_LABELS = {"trained-head": "trained head", "attend-and-segment": "attend-and-segment"}
FORMAT_LABELS = {"plain": "plain", "kosmos": "Kosmos-2", "glamm": "GLaMM"}
SANS = ["ui-sans-serif", "system-ui", "sans-serif"]
MONO = ["ui-monospace", "monospace"]


@dataclass(frozen=True)
class WebLimits:
    """What one question may hold: the uploaded file's bytes, the image's pixels, the size of the text
    fields; and how many questions may wait in the queue."""

    max_upload_bytes: int = 10 * 2**20
    max_pixels: int = 4096 * 4096
    max_question_chars: int = 2000
    max_phrases_chars: int = 1000
    max_phrases: int = 16
    max_queue: int = 16


def user_error(message: str) -> gr.Error:
    """The error a bad input shows in the page; its traceback would only clutter the log."""
    return gr.Error(message, print_exception=False)


def read_text(value: str | None, name: str, max_chars: int) -> str:
    """A text field without its edge whitespace; an error when over `max_chars`."""
    text = (value or "").strip()
    if len(text) > max_chars:
        raise user_error(f"the {name} is longer than the limit of {max_chars} characters")
    return text


def read_phrases(value: str | None, limits: WebLimits) -> list[str]:
    """The phrases field ("a; b") as a list; an error when too long or naming too many phrases."""
    phrases = parse_phrase_list(read_text(value, "phrases field", limits.max_phrases_chars))
    if len(phrases) > limits.max_phrases:
        raise user_error(
            f"the phrases field has {len(phrases)} phrases, more than the limit of {limits.max_phrases}"
        )
    return phrases


def read_image(upload: dict | None, max_pixels: int) -> np.ndarray:
    """The uploaded image (gradio's file data: a dict with its `path` in gradio's cache) -> `(H, W, 3)`
    uint8 RGB; an error when absent, not an image, or over `max_pixels` (checked from the header, before
    the pixels are decoded)."""
    path = (upload or {}).get("path")
    if not path:
        raise user_error("no image was uploaded")
    unreadable = user_error("the upload is not an image that can be read (PNG, JPEG, ...)")
    try:
        with Image.open(path) as header:  # the header only: the pixels are decoded below, within the limit
            width, height = header.size
    except Image.DecompressionBombError:  # PIL's own limit, met before the check below can run
        raise user_error(f"the image has more pixels than the limit of {max_pixels}") from None
    except (OSError, ValueError):  # PIL's open turns its plugins' errors into UnidentifiedImageError
        raise unreadable from None
    if width * height > max_pixels:
        raise user_error(f"the image has {width}x{height} pixels, more than the limit of {max_pixels}")
    try:
        return load_rgb(path)
    except DataError:  # a corrupt or truncated body behind a valid header
        raise unreadable from None


def colour(index: int) -> str:
    """Phrase `index`'s colour in the overlay palette, as `#rrggbb`."""
    return "#{:02x}{:02x}{:02x}".format(*PALETTE[index % len(PALETTE)])


def label(index: int) -> str:
    """Phrase `index`'s label in the highlighted text and on its mask: `#i`, as in the plain text format."""
    return f"#{index}"


def highlighted(result: DemoResult) -> dict:
    """HighlightedText's value: the grounded text with phrase i labelled `label(i)`."""
    entities = [
        {"entity": label(i), "start": p.span[0], "end": p.span[1]} for i, p in enumerate(result.phrases)
    ]
    return {"text": result.text, "entities": entities}


def annotated(result: DemoResult, image: np.ndarray) -> tuple[np.ndarray, list[tuple[np.ndarray, str]]]:
    """AnnotatedImage's value: the image and phrase i's mask `(H, W)` (0 / 1) labelled `label(i)`."""
    return image, [(p.mask.astype(np.uint8), label(i)) for i, p in enumerate(result.phrases)]


def build_app(
    demos: Demo | Sequence[Demo],
    limits: WebLimits | None = None,
    settings: GenerationSettings | None = None,
    source: str = "auto",
) -> gr.Blocks:
    """The demo page for `demos` (one per mode; the first is selected), answering with decoding `settings`
    and choosing phrases from `source` (see `Demo.run`). Serve it with `launch`."""
    demos = [demos] if isinstance(demos, Demo) else list(demos)
    by_mode = {demo.mode: demo for demo in demos}
    if not demos or len(by_mode) != len(demos):
        raise ValueError(f"give one Demo per mode, not {[demo.mode for demo in demos]}")
    limits, settings = limits or WebLimits(), settings or GenerationSettings()
    # Every label a result can have, so the outputs are plain values (an API client gets no colour updates).
    colours = {label(i): colour(i) for i in range(limits.max_phrases)}

    def ask(
        upload: dict | None, question: str, phrases: str, mode: str, style: str
    ) -> tuple[dict, tuple, str]:
        question = read_text(question, "question", limits.max_question_chars)
        phrase_list = read_phrases(phrases, limits)
        if not question and not phrase_list:
            raise user_error("the question is empty (ask something, or give phrases to ground)")
        # The API may send any value: the page's choices are checked again.
        if mode not in by_mode:
            raise user_error(f"the mode must be one of {sorted(by_mode)}, not {mode!r}")
        if style not in TEXT_FORMATS:
            raise user_error(f"the output format must be one of {list(TEXT_FORMATS)}, not {style!r}")
        image = read_image(upload, limits.max_pixels)
        try:
            result = by_mode[mode].run(image, question or None, phrase_list or None, settings, source)
        except ValueError as exc:  # the input, e.g. a phrase that covers no token
            raise user_error(str(exc)) from None
        except Exception:  # a failure inside the model must not show its text, nor stop the app
            log.exception("demo question failed")
            raise gr.Error(INTERNAL_ERROR, print_exception=False) from None
        return highlighted(result), annotated(result, image), format_answer(result, style)

    # delete_cache: every hour, the uploads and outputs older than an hour go, so a demo that runs for weeks
    # does not fill the temporary folder.
    with gr.Blocks(title="flmm demo", analytics_enabled=False, delete_cache=(3600, 3600)) as app:
        gr.Markdown(
            "## Ask the frozen LMM\nUpload an image, ask about it; what the answer names is segmented."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(
                    type="filepath", label="Image", sources=["upload", "clipboard"], elem_id="image"
                )
                question = gr.Textbox(
                    label="Question", placeholder="What is the red object?", elem_id="question"
                )
                phrases = gr.Textbox(
                    label="Phrases to ground (optional)",
                    placeholder="a red circle; the sky",
                    elem_id="phrases",
                )
                mode = gr.Radio(
                    [(MODE_LABELS[m], m) for m in by_mode], value=demos[0].mode, label="Mode", elem_id="mode"
                )
                style = gr.Radio(
                    [(FORMAT_LABELS[f], f) for f in TEXT_FORMATS], value="plain", label="Output format"
                )
                button = gr.Button("Ask", variant="primary", elem_id="ask")
            with gr.Column():
                grounded = gr.HighlightedText(
                    label="Answer, grounded phrases coloured", color_map=colours, elem_id="grounded"
                )
                overlay = gr.AnnotatedImage(label="Masks", format="png", color_map=colours, elem_id="overlay")
                text = gr.Textbox(label="Answer in the output format", elem_id="text", buttons=["copy"])
        # One event for the button and the Enter key, so that the queue's one-at-a-time holds for both.
        # preprocess=False: the handler reads the upload itself, so that every bad image (not an image, a
        # decompression bomb, too many pixels) gets its own message, from its header, before decoding.
        gr.on(
            [button.click, question.submit],
            ask,
            [image, question, phrases, mode, style],
            [grounded, overlay, text],
            api_name="ask",
            preprocess=False,
        )
    return app.queue(default_concurrency_limit=1, max_size=limits.max_queue)


def free_port(host: str) -> int:
    """A port nobody listens on now (gradio would report port 0 as the port it serves on)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def launch(
    app: gr.Blocks,
    limits: WebLimits | None = None,
    host: str = HOST,
    port: int = 7860,
    share: bool = False,
) -> str:
    """Serve `app` (with the `limits` given to `build_app`) on `host:port` (0: a free port) in a background
    thread; its URL. `share`: also through a public gradio.live link (printed by gradio). Stop it with
    `app.close()`, or wait with `app.block_thread()`."""
    limits = limits or WebLimits()
    # On the loopback address only requests naming it are answered: a DNS-rebinding page reaches 127.0.0.1
    # under its own name, which it cannot hide from the Host header. A share link or another address is
    # reached under other names.
    local = host in LOCAL_NAMES and not share
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(LOCAL_NAMES))] if local else []
    app.launch(
        server_name=host,
        server_port=port or free_port(host),
        share=share,
        prevent_thread_lock=True,
        quiet=not share,
        max_file_size=limits.max_upload_bytes,
        theme=gr.themes.Default(font=SANS, font_mono=MONO),
        ssr_mode=False,
        mcp_server=False,
        pwa=False,
        enable_monitoring=False,
        run_history=False,
        footer_links=["api"],
        app_kwargs={"middleware": middleware},
    )
    return app.local_url
