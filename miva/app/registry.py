"""The adapters the app offers: one list, shared by the Animate tab's pickers and the Train tab (which adds the
adapters it trains), keyed by a display name.

A picker may also hold a value typed by the user: an adapter folder or file on this machine, or a Hub repo id. The
registry hands that on as a source unchanged; `MIVAPipeline.load_adapters` reads it and raises a clear error when it
is not an adapter.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

NO_ADAPTER = "(none)"


class AppInputError(ValueError):
    """Bad input from the page; the message is shown there as is (one line per problem)."""


def page_html(message: str) -> str:
    """`message` for Gradio's message boxes, which render HTML: escaped, one line per line."""
    import html

    return html.escape(message, quote=False).replace("\n", "<br>")


class AdapterRegistry:
    """Ordered `display name -> source` (a local adapter folder/file as a `Path`, or a Hub repo id as a `str`).

    Thread-safe: a training thread adds while the page reads."""

    def __init__(self, sources: dict[str, Path | str] | None = None, notes: dict[str, str] | None = None):
        self._lock = threading.Lock()
        self._sources: dict[str, Path | str] = {}
        self._notes: dict[str, str] = {}
        for name, source in (sources or {}).items():
            self.add(name, source, (notes or {}).get(name, ""))

    def add(self, name: str, source: Path | str, note: str = "") -> str:
        """Register `source` under `name` (made unique with a `-2`, `-3` ... suffix), with an optional `note` the
        pickers show beside the name (e.g. "does not make its motion yet"); returns the name used."""
        name = str(name).strip()
        if not name or name == NO_ADAPTER:
            raise AppInputError(f"adapter name {name!r} is empty or reserved; give it a name")
        with self._lock:
            unique, k = name, 2
            while unique in self._sources and self._sources[unique] != source:
                unique, k = f"{name}-{k}", k + 1
            self._sources[unique] = source
            if note:
                self._notes[unique] = note
        return unique

    def set_note(self, name: str, note: str) -> None:
        """Show `note` beside registered adapter `name` in the pickers (a name not registered is ignored)."""
        with self._lock:
            if name in self._sources:
                self._notes[name] = note

    def names(self) -> list[str]:
        with self._lock:
            return list(self._sources)

    def choices(self) -> list[str]:
        """What a picker lists: `NO_ADAPTER` first, then every registered adapter."""
        return [NO_ADAPTER, *self.names()]

    def labelled_choices(self) -> list[tuple[str, str]]:
        """`choices()` as a picker's `(label, value)` pairs: the label adds the adapter's note, the value is its name."""
        with self._lock:
            notes = dict(self._notes)
        return [(f"{name} ({notes[name]})" if name in notes else name, name) for name in self.choices()]

    def source(self, choice: str) -> Path | str | None:
        """The source a picker's value stands for: None for `NO_ADAPTER` / empty, a registered source, else the
        typed value itself (a local path, or a Hub repo id) for the loader to read or reject."""
        choice = (choice or "").strip()
        if not choice or choice == NO_ADAPTER:
            return None
        with self._lock:
            if choice in self._sources:
                return self._sources[choice]
        expanded = os.path.expanduser(choice)
        return Path(expanded) if os.path.exists(expanded) or os.path.isabs(expanded) else choice


def parse_adapter_argument(text: str) -> tuple[str, Path | str]:
    """`--adapter NAME=SOURCE` or `--adapter SOURCE` (named after the folder / repo) -> `(name, source)`."""
    name, sep, source = text.partition("=")
    if not sep:
        source = text
        name = Path(text.rstrip("/")).name or text
    if not source:
        raise AppInputError(f"--adapter {text!r}: expected NAME=FOLDER_OR_HUB_ID or FOLDER_OR_HUB_ID")
    path = Path(os.path.expanduser(source))
    return name, (path if path.exists() else source)
