"""A checksum over an adapter file's tensors and config, stored in its safetensors metadata (`miva_sha256`).

safetensors checks the header's layout but not the tensor bytes, so a flipped bit in the data would load as a
silently different adapter. `save` writes the SHA-256 of every tensor (name, dtype, shape, bytes, in key order)
and of the `miva_config` metadata; loading recomputes it and refuses a file that does not match, naming it. Files
written before the checksum existed (no `miva_sha256` key) load as before.
"""

from __future__ import annotations

import hashlib
import os

import torch

CHECKSUM_KEY = "miva_sha256"


def tensors_checksum(tensors: dict[str, torch.Tensor], config_json: str | None = None) -> str:
    """Hex SHA-256 of `tensors` (CPU, any dtype) and the config JSON string."""
    digest = hashlib.sha256()
    digest.update((config_json or "").encode("utf-8"))
    for key in sorted(tensors):
        tensor = tensors[key].detach().to("cpu").contiguous()
        digest.update(f"\0{key}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        if tensor.numel():
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def verify_checksum(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Raise `ValueError` naming `path` when its stored checksum does not match its content."""
    stored = metadata.get(CHECKSUM_KEY)
    if stored is None:
        return
    if tensors_checksum(tensors, metadata.get("miva_config")) != stored:
        raise ValueError(
            f"{os.fspath(path)} is corrupt: its content does not match the checksum stored when it was saved "
            f"({CHECKSUM_KEY}); download or copy the adapter again"
        )
