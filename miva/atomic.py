"""Atomic writes: a folder or file appears under its final name complete, or not at all.

Writers validate everything first, write into a temporary sibling (same file system, so the final step is an
`os.replace` rename), and only then swap it in. Replacing an older folder takes two renames: the old folder is
renamed aside (`<name>.miva-old-<id>`), then the new one takes its name, then the old one is deleted.

What a crash leaves, and how the next write (`atomic_folder`) or read (`recover_folder`) repairs it:

- before the first rename: the old folder under the final name, a `.miva-tmp-` leftover (deleted);
- between the two renames: no folder under the final name, the old one aside as `.miva-old-` -> it is renamed
  back, so the old folder is what a reader finds;
- after the second rename: the new folder under the final name, the old one aside (deleted).

A rename that fails without a crash (an `OSError`) is rolled back at once: the old folder is back under its name
before the error propagates. Deleting (`remove_folder`) renames the folder aside as `.miva-del-<id>` first, so a
crash half-way through the delete never leaves a half-deleted folder under its name, nor one that would be restored.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "atomic_folder",
    "atomic_write_text",
    "recover_folder",
    "remove_folder",
    "replace_folder",
    "sweep_leftovers",
]

# `_OLD`: an old folder set aside by `replace_folder` (restored when its name is free); `_TMP`, `_DEL`: always junk.
_TMP, _OLD, _DEL = ".miva-tmp-", ".miva-old-", ".miva-del-"


def _sibling(final: Path, infix: str) -> Path:
    return final.with_name(f"{final.name}{infix}{uuid.uuid4().hex[:8]}")


def _delete(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)


def recover_folder(final: str | os.PathLike) -> bool:
    """Undo a crash between `replace_folder`'s two renames: when nothing is under the name `final` but an old folder
    was set aside (`<final>.miva-old-<id>`), rename it back. Returns True when it did."""
    final = Path(final)
    if final.exists() or not final.parent.is_dir():
        return False
    aside = [p for p in final.parent.glob(f"{final.name}{_OLD}*") if len(p.name) == len(final.name) + len(_OLD) + 8]
    if not aside:
        return False
    os.replace(max(aside, key=lambda p: p.stat().st_ctime), final)  # one at most, unless crashes were never repaired
    return True


def sweep_leftovers(parent: str | os.PathLike, prefix: str = "") -> None:
    """Repair and clean up after interrupted writes and deletes in `parent` (names starting with `prefix`): an old
    folder whose final name is free is restored (`recover_folder`), every other leftover is deleted."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    for path in list(parent.iterdir()):
        if path.name.startswith(prefix) and _OLD in path.name:
            recover_folder(parent / path.name[: path.name.rindex(_OLD)])
    for path in parent.iterdir():
        if path.name.startswith(prefix) and any(infix in path.name for infix in (_TMP, _OLD, _DEL)):
            _delete(path)


def _sweep(final: Path) -> None:
    sweep_leftovers(final.parent, final.name + ".miva-")


def remove_folder(path: str | os.PathLike) -> None:
    """Delete a folder without ever leaving it half-deleted under its name: rename it aside first, then delete."""
    path = Path(path)
    if not path.exists():
        return
    doomed = _sibling(path, _DEL)
    os.replace(path, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def replace_folder(
    tmp: str | os.PathLike, final: str | os.PathLike, keep_extra: bool = False, owned: tuple[str, ...] = ()
) -> Path:
    """Put the completely written folder `tmp` under the name `final`, replacing an older `final` (see the module
    docstring for what a crash at each step leaves).

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
    try:
        os.replace(tmp, final)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):  # a crash here is repaired by `recover_folder`
                os.replace(old, final)
        raise
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
    on an exception `tmp` is deleted and `out` is untouched. An old `out` left aside by a crash is restored first."""
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
