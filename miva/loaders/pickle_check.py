"""Tell a damaged `.pt` from one that needs arbitrary code, without running any of it.

When `torch.load(weights_only=True)` refuses a file, the reason may be a pickle that asks for code (globals other
than tensors and containers) or plain damage (a truncated file, a flipped bit). `pickletools.genops` walks the
opcodes without executing them: a pickle whose opcodes do not parse to the end is damaged.
"""

from __future__ import annotations

import os
import pickletools
import zipfile


def _pickle_bytes(path: str | os.PathLike) -> bytes:
    """The pickle stream of a torch zip checkpoint (`<name>/data.pkl`, CRC-checked by zipfile) or of a raw pickle."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = next((n for n in archive.namelist() if n.endswith("data.pkl")), None)
            if member is None:
                raise ValueError("no data.pkl in the archive")
            return archive.read(member)
    with open(path, "rb") as f:
        return f.read()


def pickle_is_damaged(path: str | os.PathLike) -> bool:
    """Whether the file's pickle stream is structurally broken (as opposed to well-formed but unsafe)."""
    try:
        for _ in pickletools.genops(_pickle_bytes(path)):
            pass
    except Exception:  # zipfile.BadZipFile, ValueError("pickle exhausted ..."), unknown opcodes, bad lengths
        return True
    return False
