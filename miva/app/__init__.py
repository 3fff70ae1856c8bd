"""`miva app`: a local web app (Gradio) to animate images with MIVA adapters and to train new ones.

    pip install "miva[app]"
    miva app                      # the shipped MotionWorld base and its adapters, offline, on http://127.0.0.1:7860
    miva app --base tiny          # the random tiny model (a quick look at the page, no meaningful motion)
    miva app --base runwayml/stable-diffusion-v1-5 --motion-adapter guoyww/animatediff-motion-adapter-v1-5-3

Modules: `bases` (which model, and its defaults: sampling, training recipe, notes on shipped adapters), `registry`
(which adapters), `animate` (the Animate tab's work), `regions` (each adapter row's painted region and
schedule), `upload` (the image input's check), `training` (the Train tab's
work, the project's trainer in a background thread, Stop), `parts` (the adapter parts the Train form offers), `clips`
(the Train tab's clip checks and messages in the form's words), `layout` (the page). Importing this package does not
import Gradio; `build_app` does.
"""

from __future__ import annotations

INSTALL_HINT = "pip install 'miva[app]'"


def gradio_missing() -> str | None:
    """None when Gradio imports, else the one-line message saying how to get it."""
    try:
        import gradio  # noqa: F401
    except ImportError as e:
        return f"the web app needs Gradio, which is not installed ({e}); {INSTALL_HINT}"
    return None


def build_app(*args, **kwargs):
    """`miva.app.layout.build_app` (imported on first use: it needs Gradio)."""
    from .layout import build_app as build

    return build(*args, **kwargs)
