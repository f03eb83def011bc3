"""The demo's Gradio app in a real headless Chromium (selenium) and through its API (gradio_client).

One app per module on a free port, served by gradio's own background thread, in both modes: the trained head
of the session's toy checkpoint and attend-and-segment on the toy world's models; one browser per module.
Chromium and chromedriver are Debian's (`tools/setup.sh` installs them as root); the browser tests skip,
with the reason, only where they are missing. Nothing may leave the machine: Chromium resolves no name but
127.0.0.1 (`--host-resolver-rules`) and its performance log lists every request it tried; in this process,
every connection or name lookup for another host is refused and recorded while the module runs.
"""

from __future__ import annotations

import ipaddress
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from gradio_client import Client, handle_file
from PIL import Image
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from flmm.data.overlay import PALETTE
from flmm.demo.answer import GenerationSettings
from flmm.demo.gradio_app import WebLimits, build_app, launch
from flmm.demo.output import format_answer
from flmm.demo.pipeline import Demo
from tests.conftest import TOY_CONFIG, ToyWorld, toy_overrides

LIMITS = WebLimits(max_upload_bytes=300_000, max_pixels=200 * 200, max_question_chars=200)
SETTINGS = GenerationSettings(max_new_tokens=4)
QUESTION = "What is the red circle?"
WAIT_S = 60  # a loaded two-core machine answers a toy question in seconds; this is only the hang guard
CHROMIUM_FLAGS = [
    "--headless=new",
    "--no-sandbox",  # tests run as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,1600",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def is_local(host: object) -> bool:
    """Whether `host` (a name or an address) is this machine's loopback."""
    if host in ("localhost", None):
        return True
    try:
        return ipaddress.ip_address(str(host).strip("[]")).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def outside() -> list[str]:
    """The hosts other than loopback that this process tried to reach while the module ran (refused)."""
    tried: list[str] = []
    connect, lookup = socket.socket.connect, socket.getaddrinfo

    def guarded_connect(sock, address, *args):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address[0]):
            tried.append(str(address[0]))
            raise OSError(f"test: no connection to {address[0]} may leave this machine")
        return connect(sock, address, *args)

    def guarded_lookup(host, *args, **kwargs):
        if not is_local(host.decode() if isinstance(host, bytes) else host):
            tried.append(str(host))
            raise socket.gaierror(f"test: no name but localhost is resolved ({host})")
        return lookup(host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", guarded_connect)
        patch.setattr(socket, "getaddrinfo", guarded_lookup)
        yield tried


@pytest.fixture(scope="module")
def demos(smoke_run: Path, toy_world: ToyWorld, tmp_path_factory) -> list[Demo]:
    head = Demo.from_checkpoint(smoke_run / "checkpoints" / "last.ckpt", device="cpu")
    overrides = toy_overrides(toy_world, tmp_path_factory.mktemp("web_attend"))
    return [head, Demo.from_config(TOY_CONFIG, overrides, device="cpu")]


@pytest.fixture(scope="module")
def url(outside, demos):
    app = build_app(demos, LIMITS, SETTINGS)
    yield launch(app, LIMITS, port=0)
    app.close(verbose=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    """`small` (48 x 64, the one to ask about), `wide` (300 x 300: over the pixel limit, under the file
    limit) and `heavy` (400 x 400 random pixels: a PNG over the 300 000 byte file limit)."""
    folder, rng = tmp_path_factory.mktemp("web_images"), np.random.default_rng(0)
    paths = {}
    for name, size in (("small", (48, 64)), ("wide", (300, 300)), ("heavy", (400, 400))):
        paths[name] = folder / f"{name}.png"
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(paths[name])
    assert paths["wide"].stat().st_size < LIMITS.max_upload_bytes < paths["heavy"].stat().st_size
    return paths


@pytest.fixture(scope="module")
def browser(url):
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and chromedriver):
        pytest.skip(
            "chromium / chromedriver are not installed: `bash tools/setup.sh` as root installs Debian's "
            "chromium and chromium-driver"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    # An explicit driver path: selenium's own driver manager (which downloads browsers) never runs.
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    yield driver
    driver.quit()


class Page:
    """The demo page in the browser, loaded afresh, so no earlier answer or message is on it."""

    def __init__(self, browser: webdriver.Chrome, url: str):
        self.browser, self.wait = browser, WebDriverWait(browser, WAIT_S)
        browser.get(url)
        self.find("#ask")

    def find(self, css: str):
        """The first element matching `css`, once there is one."""
        return self.wait.until(lambda b: b.find_elements(By.CSS_SELECTOR, css))[0]

    def ask(self, image: Path, question: str, phrases: str = "", mode: str = "", style: str = "") -> None:
        """Upload `image`, fill in the fields, pick the radio buttons labelled `mode` / `style`, submit."""
        self.upload(image)
        self.find("#image img")  # the preview: the upload has finished
        self.find("#question textarea").send_keys(question)
        self.find("#phrases textarea").send_keys(phrases)
        for label in (mode, style):
            if label:
                xpath = f"//label[.//span[normalize-space()='{label}']]"
                self.wait.until(lambda b, x=xpath: b.find_elements(By.XPATH, x))[0].click()
        self.find("#ask").click()

    def upload(self, image: Path) -> None:
        self.find("#image input[type=file]").send_keys(str(image))

    def error(self) -> str:
        """The text of the error message the page shows."""

        def shown(browser: webdriver.Chrome) -> list[str]:
            found = browser.find_elements(By.CSS_SELECTOR, ".toast-body.error .toast-message-text")
            return [text for e in found if (text := e.get_attribute("textContent").strip())]

        return self.wait.until(shown)[0]

    def phrases(self) -> list[tuple[str, str, str]]:
        """(text, label, background colour) of each highlighted phrase of the answer."""
        tokens = self.browser.find_elements(By.CSS_SELECTOR, "#grounded .token.highlighted")
        return [
            (
                t.find_element(By.CSS_SELECTOR, ".text").text,
                t.find_element(By.CSS_SELECTOR, ".label").text,
                t.find_element(By.CSS_SELECTOR, ".label").value_of_css_property("background-color"),
            )
            for t in tokens
        ]

    def loaded_images(self, css: str) -> list[int]:
        """The natural widths of the images matching `css`, each waited for until it has loaded."""
        self.find(css)
        script = "return [...document.querySelectorAll(arguments[0])].map(i => i.complete && i.naturalWidth)"
        return self.wait.until(lambda b: (w := b.execute_script(script, css)) and all(w) and w)


def rgb(index: int) -> str:
    """Palette colour `index` as the browser writes a computed colour."""
    return "rgba({}, {}, {}, 1)".format(*PALETTE[index])


def test_browser_asks_and_sees_the_answer_coloured_and_the_masks(browser, url, images, demos):
    page = Page(browser, url)
    page.ask(images["small"], QUESTION)
    page.find("#grounded .token.highlighted")
    expected = demos[0].run(np.array(Image.open(images["small"])), QUESTION, None, SETTINGS)
    assert page.phrases() == [(expected.phrases[0].text, "#0", rgb(0))]  # the whole answer, trained head
    assert page.loaded_images("#overlay img.base-image") == [64]
    assert page.loaded_images("#overlay img.mask") == [64]
    assert page.find("#text textarea").get_attribute("value") == format_answer(expected, "plain")


def test_browser_picks_the_mode_and_format_and_grounds_given_phrases(browser, url, images):
    page = Page(browser, url)
    page.ask(images["small"], QUESTION, "red circle; sky", mode="attend-and-segment", style="GLaMM")
    page.find("#grounded .token.highlighted")
    assert page.phrases() == [("red circle", "#0", rgb(0)), ("sky", "#1", rgb(1))]
    assert page.loaded_images("#overlay img.mask") == [64, 64]
    assert "<p> red circle </p> [SEG]. <p> sky </p> [SEG]" in page.find("#text textarea").get_attribute(
        "value"
    )


def test_browser_shows_the_message_of_a_bad_input_and_the_next_question_works(browser, url, images):
    page = Page(browser, url)
    page.ask(images["wide"], QUESTION)
    assert page.error() == "the image has 300x300 pixels, more than the limit of 40000"
    page = Page(browser, url)
    page.ask(images["small"], "why? " * 41)
    assert page.error() == "the question is longer than the limit of 200 characters"
    page = Page(browser, url)
    page.ask(images["small"], QUESTION)
    assert page.find("#grounded .token.highlighted .label").text == "#0"


def test_browser_refuses_a_file_over_the_size_limit(browser, url, images):
    page = Page(browser, url)
    page.upload(images["heavy"])
    assert "exceed the maximum allowed size" in page.error()


def test_api_gives_the_answer_and_one_mask_per_phrase(url, images, demos, tmp_path):
    client = Client(url, verbose=False, analytics_enabled=False, download_files=tmp_path)
    image = np.array(Image.open(images["small"]))
    tokens, annotated, text = client.predict(
        handle_file(images["small"]),
        QUESTION,
        "red circle; sky",
        "attend-and-segment",
        "kosmos",
        api_name="/ask",
    )
    expected = demos[1].run(image, QUESTION, ["red circle", "sky"], SETTINGS)
    assert text == format_answer(expected, "kosmos")
    marked = [(t["token"], t["class_or_confidence"]) for t in tokens if t["class_or_confidence"]]
    assert marked == [("red circle", "#0"), ("sky", "#1")]
    assert np.array_equal(np.array(Image.open(annotated["image"])), image)
    assert [a["label"] for a in annotated["annotations"]] == ["#0", "#1"]
    for annotation, phrase in zip(annotated["annotations"], expected.phrases, strict=True):
        rgba = np.array(Image.open(annotation["image"]))
        assert np.array_equal(rgba[..., 3] > 0, phrase.mask)


def test_the_page_and_the_server_reach_nothing_but_localhost(browser, url, outside):
    Page(browser, url).find("#grounded")  # the whole page, in case this test runs alone
    requested = set()
    for entry in browser.get_log("performance"):  # every request since the browser started
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            requested.add(message["params"]["request"]["url"])
    assert requested and all(u.startswith((url, "data:", "blob:")) for u in requested), sorted(requested)
    assert outside == []
