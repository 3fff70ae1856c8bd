"""`miva app`: serve the web app (Gradio) that animates images with MIVA adapters and trains new ones.

    miva app                                   # MotionWorld, the base shipped with miva, and its adapters; offline
    miva app --base world-wan                  # the MotionWorld Wan2.1 base (miva-world-wan) and its adapters
    miva app --base tiny                       # the offline random tiny model (the page's mechanics only)
    miva app --base ./sd15 --motion-adapter ./animatediff-v1-5-3 --adapter waterfall=./adapters/waterfall
    miva app --host 0.0.0.0 --port 7861        # reachable from other machines

Gradio is an optional extra (`pip install 'miva[app]'`); without it this prints one line and exits with 2, as it
does when the base cannot be used (e.g. `--base world` on an install without `miva.world`).
"""

from __future__ import annotations

import argparse
import os
import sys

HELP = "serve a local web app (Gradio) to animate images with MIVA adapters and to train adapters"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base",
        default="world",
        help="'world' (default: the shipped MotionWorld base), 'world-wan' (its Wan2.1 counterpart), 'tiny' (random "
        "offline weights), or an SD1.5 diffusers folder / Hub id (then also --motion-adapter)",
    )
    parser.add_argument("--motion-adapter", help="MotionAdapter folder, Hub id or AnimateDiff file (for an SD1.5 base)")
    parser.add_argument(
        "--adapter",
        dest="adapters",
        action="append",
        default=[],
        metavar="[NAME=]FOLDER_OR_HUB_ID",
        help="an adapter to list in the Animate tab (repeatable)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1, this machine)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument(
        "--out", default="outputs/app", help="videos and trained adapters go here (default: outputs/app)"
    )


def _fail(message: str) -> int:
    print(f"miva app: error: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..app import gradio_missing
    from ..app.bases import BaseUnavailable, resolve_base
    from ..app.registry import AdapterRegistry, AppInputError, parse_adapter_argument

    try:
        base = resolve_base(args.base, args.motion_adapter)
        registry = AdapterRegistry(base.shipped_adapters)
        for text in args.adapters:
            name, source = parse_adapter_argument(text)
            registry.add(name, source)
    except (BaseUnavailable, AppInputError) as e:
        return _fail(str(e))
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a local app: no usage reports, no version checks
    missing = gradio_missing()
    if missing:
        return _fail(missing)
    import logging

    from ..app import build_app

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    out_dir = Path(args.out).resolve()
    print(f"miva app: loading the base ({base.label}) ...", flush=True)
    app = build_app(base, registry, out_dir)
    app.blocks.queue(default_concurrency_limit=1).launch(
        server_name=args.host,
        server_port=args.port,
        allowed_paths=[str(out_dir), *(str(p) for p in base.shipped_adapters.values())],
        footer_links=[],
        show_error=True,
    )
    return 0
