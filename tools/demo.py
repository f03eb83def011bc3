"""Ask the frozen LMM about an image and ground what it answers (reasoning segmentation).

    python tools/demo.py --ckpt PATH --image IMG "What is the red object?"
    python tools/demo.py --mode attend-and-segment --config CONFIG --image IMG ["question"] [--phrases "a; b"]
    python tools/demo.py --web [--host H] [--port N] [--share] [--ckpt PATH] [--config CONFIG]

The LMM answers with its own generate() (greedy by default; --sample with --temperature / --top-p /
--seed), the phrases to ground are chosen (--source: the whole answer, or the checkpoint's keyword
selector; --phrases grounds given phrases instead, found in the answer when they all are, else on their
own) and grounded by the trained head of --ckpt or, training-free, by attend-and-segment (the attention
peak as a SAM point prompt; --top-heads keeps only the most concentrated heads). Prints the answer with
its phrases marked (--format plain|kosmos|glamm) and writes OUT/overlay.png and OUT/result.json.
--web serves the same as a Gradio app on http://127.0.0.1:7860/ instead (--host, --port; --share also makes a
public gradio.live link), in the modes it is given: --ckpt the trained head, --config attend-and-segment,
or both (--mode picks the one selected first). `key=value` arguments override the config.
The answer tokens' attention is recorded while the LMM generates them (hooked capture, LLaVA-1.5);
--prefill-grounding takes it from one more prefill over prompt + answer, the path other setups use.
--variant / --heads choose attend-and-segment's variant (flmm.engine.attend; result.json's "attend" says
what was used); --system-prompt puts a system turn before the question.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from flmm.cli import (
    add_attend_arguments,
    device_name,
    fraction,
    output_folder,
    parse_with_overrides,
    positive_int,
)
from flmm.data.image_io import load_rgb
from flmm.demo.answer import GenerationSettings
from flmm.demo.output import format_answer, write_outputs
from flmm.demo.phrases import TEXT_FORMATS, parse_phrase_list
from flmm.demo.pipeline import SOURCES, Demo
from flmm.errors import FlmmError

MODES = ("head", "attend-and-segment")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("question", nargs="?", default=None, help="the question to ask about the image")
    parser.add_argument(
        "--mode", choices=MODES, default=None, help="trained head (--ckpt, the default) or training-free"
    )
    parser.add_argument(
        "--ckpt",
        type=Path,
        help="checkpoint of tools/train.py or head folder of tools/export_head.py (mode head)",
    )
    parser.add_argument("--config", type=Path, help="config naming the LMM and SAM (mode attend-and-segment)")
    parser.add_argument("--image", type=Path, help="the image (not with --web)")
    parser.add_argument("--phrases", default=None, help='phrases to ground instead of choosing, "a; b"')
    parser.add_argument("--source", choices=SOURCES, default="auto", help="how phrases are chosen")
    parser.add_argument(
        "--out", type=Path, default=Path("demo_out"), help="folder for overlay.png, result.json"
    )
    parser.add_argument("--format", choices=TEXT_FORMATS, default="plain", help="how the answer is printed")
    parser.add_argument("--max-new-tokens", type=positive_int, default=64)
    decoding = parser.add_mutually_exclusive_group()
    decoding.add_argument("--greedy", dest="sample", action="store_false", help="greedy decoding (default)")
    decoding.add_argument("--sample", dest="sample", action="store_true", help="sample the answer")
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--top-p", type=float, default=0.9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--top-heads",
        type=fraction,
        default=None,
        metavar="FRACTION",
        help="attend-and-segment: average only this fraction of the most concentrated attention heads",
    )
    add_attend_arguments(parser)
    parser.add_argument(
        "--system-prompt",
        default=None,
        help="a system turn before the question (default: the chat template's own, if it has one)",
    )
    parser.add_argument(
        "--device", type=device_name, default=None, help="cpu, cuda, cuda:1 (default: cuda when available)"
    )
    parser.add_argument(
        "--prefill-grounding",
        action="store_true",
        help="ground from one prefill over prompt + answer after generating, not from the decode steps",
    )
    parser.add_argument("--web", action="store_true", help="serve the demo as a Gradio app on --host")
    parser.add_argument("--host", default="127.0.0.1", help="--web: the address to listen on")
    parser.add_argument("--port", type=int, default=7860, help="--web: the port (0: any free one)")
    parser.add_argument("--share", action="store_true", help="--web: also serve on a public gradio.live link")
    args = parse_with_overrides(parser, argv, "model.selector.threshold=0.3")
    if args.web:
        if args.ckpt is None and args.config is None:
            parser.error("--web needs --ckpt (mode head), --config (mode attend-and-segment) or both")
        if args.mode is not None and (args.ckpt if args.mode == "head" else args.config) is None:
            parser.error(f"--mode {args.mode} needs {'--ckpt' if args.mode == 'head' else '--config'}")
        return args
    args.mode = args.mode or "head"
    if args.mode == "head" and (args.ckpt is None or args.config is not None):
        parser.error("mode head needs --ckpt (and no --config)")
    if args.mode == "attend-and-segment" and (args.config is None or args.ckpt is not None):
        parser.error("mode attend-and-segment needs --config (and no --ckpt)")
    if args.image is None:
        parser.error("--image is required (or --web)")
    if args.question is None and not args.phrases:
        parser.error("give a question, --phrases, or both")
    if args.question is not None and not args.question.strip():
        parser.error("the question is empty: ask something, or leave it out and give --phrases")
    return args


def load_demo(args: argparse.Namespace, mode: str) -> Demo:
    during = {"ground_during_generation": not args.prefill_grounding}
    if mode == "head":
        demo = Demo.from_checkpoint(args.ckpt, args.overrides, args.device, **during)
        if args.system_prompt is not None:
            demo.adapter.system_prompt = args.system_prompt
        return demo
    return Demo.from_config(
        args.config,
        args.overrides,
        args.top_heads,
        args.device,
        variant=args.variant,
        heads=args.heads,
        system_prompt=args.system_prompt,
        **during,
    )


def serve(args: argparse.Namespace, settings: GenerationSettings) -> None:
    """The Gradio app in every mode given (--mode's first), until Ctrl-C."""
    from flmm.demo.gradio_app import build_app, launch  # gradio takes seconds to import; only --web needs it

    modes = [m for m, given in zip(MODES, (args.ckpt, args.config), strict=True) if given is not None]
    modes.sort(key=lambda m: m != args.mode)
    app = build_app([load_demo(args, m) for m in modes], settings=settings, source=args.source)
    try:
        url = launch(app, host=args.host, port=args.port, share=args.share)
    except OSError:
        raise ValueError(
            f"cannot serve on {args.host}:{args.port}: the port is busy or not this machine's address"
        ) from None
    print(f"serving on {url} (Ctrl-C stops)", flush=True)
    app.block_thread()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = GenerationSettings(args.max_new_tokens, args.sample, args.temperature, args.top_p, args.seed)
    try:
        settings.generate_kwargs()  # bad decoding options fail now, not at the first question
        if args.web:
            serve(args, settings)
            return 0
        # The output folder, the image and the phrases first: a wrong path fails before minutes of model
        # loading, and an --out that cannot be written before the answer is lost.
        output_folder(args.out, "cannot write the outputs to --out")
        image = load_rgb(args.image)
        phrases = parse_phrase_list(args.phrases) if args.phrases else None
        result = load_demo(args, args.mode).run(image, args.question, phrases, settings, args.source)
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
