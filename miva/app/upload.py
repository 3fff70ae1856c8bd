"""The Animate tab's image input: Gradio's `Image` whose bad upload is one line naming the file.

Gradio opens an uploaded image with PIL when an event reads it; a file that is not an image then fails inside
Gradio (PIL's message about a temporary path, a traceback in the server's log). `checked_image` hands the event a
`BadUpload` instead, which the Animate tab reports in one line like any other bad input. Importing this module
imports Gradio (`miva.app.layout` does it when the page is built).
"""

from __future__ import annotations

import gradio as gr

from .animate import BadUpload
from .registry import page_html


def checked_image(**kwargs) -> gr.Image:
    """`gr.Image(**kwargs)` whose value is a `BadUpload` for a file PIL cannot open as an image. (The instance's
    `preprocess` is wrapped: a subclass of a Gradio component would make Gradio write a `.pyi` stub beside this
    module on import.)"""
    image = gr.Image(**kwargs)
    preprocess = image.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except (OSError, ValueError, SyntaxError):  # PIL: UnidentifiedImageError (an OSError), truncated files
            return BadUpload(getattr(payload, "orig_name", None) or "the uploaded file")

    image.preprocess = checked
    return image


def check_upload(image) -> None:
    """The image input's upload event: a bad upload's message at once (a warning: the page keeps what it shows)."""
    if isinstance(image, BadUpload):
        gr.Warning(page_html(image.message()), duration=None)
