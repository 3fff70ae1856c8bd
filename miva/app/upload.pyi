"""The Animate tab's image input: Gradio's `Image` whose bad upload is one line naming the file.

Gradio opens an uploaded image with PIL when an event reads it; a file that is not an image then fails inside
Gradio (PIL's message about a temporary path, a traceback in the server's log). `CheckedImage` hands the event a
`BadUpload` instead, which the Animate tab reports in one line like any other bad input. Importing this module
imports Gradio (`miva.app.layout` does it when the page is built).
"""

from __future__ import annotations

import gradio as gr

from .animate import BadUpload
from .registry import page_html

from gradio.events import Dependency

class CheckedImage(gr.Image):
    """`gr.Image` (the same page element) whose value is a `BadUpload` for a file PIL cannot open as an image."""

    is_template = True  # rendered by Gradio's own Image element

    def preprocess(self, payload):
        try:
            return super().preprocess(payload)
        except (OSError, ValueError, SyntaxError):  # PIL: UnidentifiedImageError (an OSError), truncated files
            return BadUpload(getattr(payload, "orig_name", None) or "the uploaded file")
    from typing import Callable, Literal, Sequence, Any, TYPE_CHECKING
    from gradio.blocks import Block
    if TYPE_CHECKING:
        from gradio.components import Timer
        from gradio.components.base import Component


def check_upload(image) -> None:
    """The image input's upload event: a bad upload's message at once (a warning: the page keeps what it shows)."""
    if isinstance(image, BadUpload):
        gr.Warning(page_html(image.message()), duration=None)