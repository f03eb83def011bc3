"""Ask the frozen LMM about an image and ground what it answers (reasoning segmentation).

    python tools/demo.py --ckpt PATH --image IMG "What is the red object?"
    python tools/demo.py --mode attend-and-segment --config CONFIG --image IMG ["question"] [--phrases "a; b"]
    python tools/demo.py --web [--port N] [--timeout S] [--max-connections N]
        (--ckpt PATH | --mode attend-and-segment --config CONFIG)

The LMM answers with its own generate() (greedy by default; --sample with --temperature / --top-p /
--seed), the phrases to ground are chosen (--source: the whole answer, or the checkpoint's keyword
selector; --phrases grounds given phrases instead, found in the answer when they all are, else on their
own) and grounded by the trained head of --ckpt or, training-free, by attend-and-segment (the attention
peak as a SAM point prompt; --top-heads keeps only the most concentrated heads). Prints the answer with
its phrases marked (--format plain|kosmos|glamm) and writes OUT/overlay.png and OUT/result.json.
--web serves the same on http://127.0.0.1:PORT/ instead (a client has --timeout seconds to send its
request; --max-connections are served at once, more get 503). `key=value` arguments override the config.
The answer tokens' attention is recorded while the LMM generates them (hooked capture, LLaVA-1.5);
--prefill-grounding takes it from one more prefill over prompt + answer, the path other setups use.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from flmm.cli import parse_with_overrides
from flmm.data.image_io import load_rgb
from flmm.demo.answer import GenerationSettings
from flmm.demo.output import format_answer, write_outputs
from flmm.demo.phrases import TEXT_FORMATS, parse_phrase_list
from flmm.demo.pipeline import SOURCES, Demo
from flmm.demo.web import ConnectionLimits, make_server
from flmm.errors import FlmmError

MODES = ("head", "attend-and-segment")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("question", nargs="?", default=None, help="the question to ask about the image")
    parser.add_argument(
        "--mode", choices=MODES, default="head", help="trained head (--ckpt) or training-free"
    )
    parser.add_argument("--ckpt", type=Path, help="checkpoint of tools/train.py (mode head)")
    parser.add_argument("--config", type=Path, help="config naming the LMM and SAM (mode attend-and-segment)")
    parser.add_argument("--image", type=Path, help="the image (not with --web)")
    parser.add_argument("--phrases", default=None, help='phrases to ground instead of choosing, "a; b"')
    parser.add_argument("--source", choices=SOURCES, default="auto", help="how phrases are chosen")
    parser.add_argument(
        "--out", type=Path, default=Path("demo_out"), help="folder for overlay.png, result.json"
    )
    parser.add_argument("--format", choices=TEXT_FORMATS, default="plain", help="how the answer is printed")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    decoding = parser.add_mutually_exclusive_group()
    decoding.add_argument("--greedy", dest="sample", action="store_false", help="greedy decoding (default)")
    decoding.add_argument("--sample", dest="sample", action="store_true", help="sample the answer")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--top-heads",
        type=float,
        default=None,
        metavar="FRACTION",
        help="attend-and-segment: average only this fraction of the most concentrated attention heads",
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    parser.add_argument(
        "--prefill-grounding",
        action="store_true",
        help="ground from one prefill over prompt + answer after generating, not from the decode steps",
    )
    parser.add_argument("--web", action="store_true", help="serve the demo page on 127.0.0.1")
    parser.add_argument(
        "--build-missing",
        action="store_true",
        help="build the toy models a checkpoint's config names if missing",
    )
    parser.add_argument("--port", type=int, default=7860)
    parser.add_argument(
        "--timeout",
        type=float,
        default=ConnectionLimits.timeout_s,
        metavar="S",
        help="--web: seconds a client has to send its request, and again to read the answer",
    )
    parser.add_argument(
        "--max-connections",
        type=int,
        default=ConnectionLimits.max_connections,
        metavar="N",
        help="--web: connections served at once; one more gets 503",
    )
    args = parse_with_overrides(parser, argv, "model.selector.threshold=0.3")
    if args.mode == "head" and (args.ckpt is None or args.config is not None):
        parser.error("mode head needs --ckpt (and no --config)")
    if args.mode == "attend-and-segment" and (args.config is None or args.ckpt is not None):
        parser.error("mode attend-and-segment needs --config (and no --ckpt)")
    if not args.web and args.image is None:
        parser.error("--image is required (or --web)")
    if not args.web and args.question is None and not args.phrases:
        parser.error("give a question, --phrases, or both")
    return args


def load_demo(args: argparse.Namespace) -> Demo:
    during = {"ground_during_generation": not args.prefill_grounding}
    if args.mode == "head":
        return Demo.from_checkpoint(args.ckpt, args.overrides, args.device, args.build_missing, **during)
    return Demo.from_config(args.config, args.overrides, args.top_heads, args.device, **during)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = GenerationSettings(args.max_new_tokens, args.sample, args.temperature, args.top_p, args.seed)
    try:
        settings.generate_kwargs()  # bad decoding options fail now, not at the first question
        if args.web:
            connections = ConnectionLimits(args.timeout, args.max_connections)  # bad values fail first
            demo = load_demo(args)
            try:
                server = make_server(demo, args.port, settings, connections=connections)
            except OSError as exc:
                raise ValueError(f"cannot serve on 127.0.0.1:{args.port}: {exc}") from None
            print(f"serving on http://127.0.0.1:{server.server_port}/ (Ctrl-C stops)")
            try:
                server.serve_forever()
            except KeyboardInterrupt:
                server.server_close()
            return 0
        # The image and the phrases first: a wrong path fails before minutes of model loading.
        image = load_rgb(args.image)
        phrases = parse_phrase_list(args.phrases) if args.phrases else None
        result = load_demo(args).run(image, args.question, phrases, settings, args.source)
    except (FlmmError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        overlay, data = write_outputs(result, image, args.out)
    except OSError as exc:
        print(f"error: cannot write the outputs to --out {args.out}: {exc}", file=sys.stderr)
        return 2
    print(format_answer(result, args.format))
    print(f"overlay: {overlay}\nresult: {data}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
