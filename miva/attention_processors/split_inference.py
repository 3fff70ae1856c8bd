"""Cross-frame attention under FreeNoise split inference (`pipe.enable_free_noise_split_inference`).

Split inference runs each spatial `Transformer2DModel` on chunks of the `(batch*frames)` rows, one after the other
and in order, so a cross-frame branch sees only some frames of a video at a time. Its reference frames (frame 0 of
the video; the previous frame) may lie in an earlier chunk: their keys/values are kept from the chunk that had them
and carried into the later ones. Since a video's frame 0 precedes its other frames, and the previous frame of a
chunk's first row is the last row of the chunk before, every reference is available when it is needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .context import CallState


class SplitInference:
    """The split-inference bookkeeping of one call: which rows each spatial layer sees in the current UNet forward,
    and the reference frames' keys/values carried from earlier chunks.

    Chunks are told apart by order, not by tensor identity: the call's timestep recorder marks the start of each UNet
    forward (`new_forward`), and each `Transformer2DModel`'s chunks follow one another from row 0 (`record`).
    """

    def __init__(self):
        self.windows: dict[str, tuple[int, int]] = {}  # spatial layer -> (start, stop) of its current chunk
        self.cursors: dict[str, int] = {}  # Transformer2DModel name -> where its next chunk starts
        self.references: dict[str, dict] = {}  # spatial layer -> {global row: (key, value)} (`carried_reference_kv`)
        self.row_cursors: dict[str, int] = {}  # temporal layer -> where its next chunk of (batch*h*w) rows starts

    def new_forward(self) -> None:
        """A UNet forward starts: every layer's chunks start again at row 0, nothing is carried over."""
        self.windows.clear()
        self.cursors.clear()
        self.references.clear()
        self.row_cursors.clear()

    def record(self, block: str, layers: tuple[str, ...], rows: int, whole: int | None) -> None:
        """`block` (a `Transformer2DModel`) runs on `rows` rows of the `whole` `(batch*frames)` batch (None: unknown,
        outside a UNet forward): when that is a chunk, its layers' window is the next `rows` rows."""
        if whole is None or rows == whole:
            return
        start = self.cursors.get(block, 0)
        self.cursors[block] = start + rows
        for layer in layers:
            self.windows[layer] = (start, start + rows)

    def temporal_rows(self, layer_name: str, rows: int, whole: int) -> tuple[int, int] | None:
        """`(start, stop)` of the `(batch*h*w)` rows a temporal layer sees when split inference chunks the motion
        modules (chunks run in order from row 0, one attention call each), or None for the whole batch."""
        if rows == whole:
            return None
        start = self.row_cursors.get(layer_name, 0) % whole
        self.row_cursors[layer_name] = start + rows
        return start, start + rows

    def reference_cache(self, layer_name: str, window: tuple[int, int]) -> dict:
        """The carried keys/values of `layer_name` (emptied at a forward's first chunk)."""
        if window[0] == 0:
            self.references[layer_name] = {}
        return self.references.setdefault(layer_name, {})


def row_window(state: CallState, layer_name: str, *, rows: int, frames: int) -> tuple[int, int] | None:
    """`(start, stop)` of the rows a spatial layer sees in this call when split inference chunks the batch, or None
    when it sees the whole `(batch*frames)` batch (or runs outside a UNet forward, where nothing is chunked)."""
    timestep = state.forward.timestep
    if timestep is None or rows == timestep.shape[0] * frames:
        return None
    window = state.forward.split.windows.get(layer_name)
    if window is None or window[1] - window[0] != rows:
        raise ValueError(f"{layer_name}: batch {rows} is neither the whole batch ({timestep.shape[0]} videos x "
                         f"{frames} frames) nor a chunk recorded by the MIVA hooks; run the whole UNet")
    return window


def carried_reference_kv(cache: dict[int, tuple[torch.Tensor, torch.Tensor]], key: torch.Tensor,
                         value: torch.Tensor, *, frames: int, window: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """Keys/values of each row's reference frames for the rows `[start, stop)` of the batch.

    `key`, `value`: `(stop - start, h*w, C)`, this chunk's. `cache` holds (global row -> (key, value) rows) from
    earlier chunks of the same forward and is updated with this chunk's frame-0 rows and its last row. Returns
    `(k_first, v_first, k_prev, v_prev)`, each `(stop - start, h*w, C)`: frame 0 of the row's video, and the previous
    frame (frame 0 for frame 0 itself).
    """
    start, stop = window

    def row(g: int) -> tuple[torch.Tensor, torch.Tensor]:
        if g >= start:
            return key[g - start], value[g - start]
        if g not in cache:
            raise RuntimeError(f"split inference: the reference frame in row {g} was not seen before row {start}; "
                               "chunks must run in order, from row 0")
        return cache[g]

    rows = range(start, stop)
    firsts = [row(g - g % frames) for g in rows]
    prevs = [row(g - 1 if g % frames else g) for g in rows]
    for g in [g for g in cache if g % frames]:  # an earlier chunk's last row: no longer anyone's previous frame
        del cache[g]
    for g in rows:
        if g % frames == 0 or g == stop - 1:
            cache[g] = (key[g - start].clone(), value[g - start].clone())

    def stack(pairs, i):
        return torch.stack([pair[i] for pair in pairs])

    return stack(firsts, 0), stack(firsts, 1), stack(prevs, 0), stack(prevs, 1)
