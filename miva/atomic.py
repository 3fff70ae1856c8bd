"""Atomic writes: a folder or file appears under its final name complete, or not at all.

Writers validate everything first, write into a temporary sibling (same file system, so the final step is an
`os.replace` rename), and only then swap it in. An older folder under the final name is renamed aside before the
swap and deleted after it, so a crash at any moment leaves either the old or the new folder under the final name,
never a half-written or half-deleted one (leftovers carry a `.miva-tmp-` / `.miva-old-` infix and are swept the
next time the same folder is written).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_folder", "atomic_write_text", "remove_folder", "replace_folder", "sweep_leftovers"]

_TMP, _OLD = ".miva-tmp-", ".miva-old-"


def _sibling(final: Path, infix: str) -> Path:
    return final.with_name(f"{final.name}{infix}{uuid.uuid4().hex[:8]}")


def sweep_leftovers(parent: str | os.PathLike, prefix: str = "") -> None:
    """Remove leftovers of interrupted writes and deletes in `parent` (of names starting with `prefix`)."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for path in parent.iterdir():
        if path.name.startswith(prefix) and (_TMP in path.name or _OLD in path.name):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _sweep(final: Path) -> None:
    sweep_leftovers(final.parent, final.name + ".miva-")


def remove_folder(path: str | os.PathLike) -> None:
    """Delete a folder without ever leaving it half-deleted under its name: rename it aside first, then delete."""
    path = Path(path)
    if not path.exists():
        return
    doomed = _sibling(path, _OLD)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def replace_folder(
    tmp: str | os.PathLike, final: str | os.PathLike, keep_extra: bool = False, owned: tuple[str, ...] = ()
) -> Path:
    """Put the completely written folder `tmp` under the name `final`, replacing an older `final`.

    `keep_extra`: entries of the old `final` that `tmp` does not have (files a user put there) are moved into the
    new folder instead of being deleted, except the names in `owned` (files the writer owns: an old one that the
    new version does not have is stale).
    """
    tmp, final = Path(tmp), Path(final)
    old = None
    if final.exists():
        if not final.is_dir():
            raise NotADirectoryError(f"{final} exists and is not a folder; remove it or choose another path")
        old = _sibling(final, _OLD)
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        if keep_extra:
            for entry in old.iterdir():
                if entry.name not in owned and not (final / entry.name).exists():
                    os.replace(entry, final / entry.name)
        shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def atomic_folder(final: str | os.PathLike, keep_extra: bool = False, owned: tuple[str, ...] = ()) -> Iterator[Path]:
    """`with atomic_folder(out) as tmp:` write into `tmp`; on normal exit `tmp` becomes `out` (see `replace_folder`);
    on an exception `tmp` is deleted and `out` is untouched."""
    final = Path(final)
    if final.exists() and not final.is_dir():
        raise NotADirectoryError(f"{final} exists and is not a folder; remove it or choose another path")
    final.parent.mkdir(parents=True, exist_ok=True)
    _sweep(final)
    tmp = _sibling(final, _TMP)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, final, keep_extra=keep_extra, owned=owned)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` through a temporary file in the same folder and `os.replace`. The file gets
    the permissions of a plain `open(path, "w")` (the umask's), not the owner-only ones of `tempfile.mkstemp`."""
    path = Path(path)
    tmp = _sibling(path, _TMP)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
