"""Item 5 of issue 27: crash safety that holds.

- `atomic.replace_folder`: a crash at each of its steps (simulated by making every rename from that point on fail,
  as if the process had died there) leaves something the next open repairs to the old or the new folder, never to
  nothing; a single failed rename is rolled back at once.
- an adapter file whose stored config metadata was edited after saving is refused by the integrity check.
- `fuse_adapters` / `set_adapters` that fail half-way leave weights and the active list exactly as before.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from state_snapshot import expect_clean_failure, take_snapshot

import miva.atomic as atomic
from miva.atomic import atomic_folder, recover_folder, replace_folder
from miva.attention_processors import MIVAAdapterConfig
from miva.pipelines import MIVAPipeline
from miva.tiny import tiny_components


def _write(final: Path, text: str) -> None:
    with atomic_folder(final) as tmp:
        (tmp / "x").write_text(text)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


class _Crash(BaseException):
    """The process dies: nothing after this point runs (no `except Exception` handler can tidy up)."""


def _crash_from_rename(monkeypatch, n: int, folders_only: bool = False) -> None:
    """Rename number `n` (1-based) and every later one fail: the process died at that rename. `folders_only`:
    count folder renames only (writers rename files of their own inside the temporary folder)."""
    real, calls = os.replace, []

    def replace(src, dst):
        if folders_only and not Path(src).is_dir():
            return real(src, dst)
        calls.append((src, dst))
        if len(calls) >= n:
            raise _Crash(f"rename {len(calls)}")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)


@pytest.mark.parametrize("crash_at, seen_after", [(1, "old"), (2, "old"), (3, "new")])
def test_replace_folder_survives_a_crash_at_each_rename(tmp_path, monkeypatch, crash_at, seen_after):
    """Renames: 1 old -> aside, 2 new -> final, 3 a user's extra file old -> new (keep_extra)."""
    final = tmp_path / "adapter"
    with atomic_folder(final) as tmp:
        (tmp / "x").write_text("old")
        (tmp / "notes.txt").write_text("mine")
    with monkeypatch.context() as m:
        _crash_from_rename(m, crash_at)
        with pytest.raises(_Crash):
            with atomic_folder(final, keep_extra=True) as tmp:
                (tmp / "x").write_text("new")
    if crash_at == 2:  # the crash window the issue names: nothing under the final name yet
        assert not final.exists() and any(".miva-old-" in n for n in _names(tmp_path))
    # The next reader finds the old or the new folder, complete.
    recover_folder(final)
    assert (final / "x").read_text() == seen_after
    # The next write repairs and sweeps everything and keeps the user's file.
    with atomic_folder(final, keep_extra=True) as tmp:
        (tmp / "x").write_text("next")
    assert _names(tmp_path) == ["adapter"] and (final / "x").read_text() == "next"
    assert crash_at == 3 or (final / "notes.txt").read_text() == "mine"


def test_next_write_restores_the_old_folder_before_anything_else(tmp_path, monkeypatch):
    """A crash between the two renames, then a write that itself fails: the old folder is back, not lost."""
    final = tmp_path / "out"
    _write(final, "old")
    with monkeypatch.context() as m:
        _crash_from_rename(m, 2)
        with pytest.raises(_Crash):
            _write(final, "new")
    with pytest.raises(RuntimeError):
        with atomic_folder(final):
            raise RuntimeError("this write fails too")
    assert (final / "x").read_text() == "old" and _names(tmp_path) == ["out"]


def test_a_failed_second_rename_is_rolled_back_at_once(tmp_path, monkeypatch):
    final = tmp_path / "out"
    _write(final, "old")
    tmp = tmp_path / "new"
    tmp.mkdir()
    (tmp / "x").write_text("new")
    real = os.replace

    def replace(src, dst):
        if Path(src) == tmp:
            raise OSError(18, "Invalid cross-device link")
        return real(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(OSError, match="cross-device"):
        replace_folder(tmp, final)
    assert (final / "x").read_text() == "old" and _names(tmp_path) == ["new", "out"]


def test_loading_an_adapter_folder_left_aside_by_a_crash(tmp_path, monkeypatch):
    """`load_adapters` on the folder's name finds the old adapter that a crash between the renames set aside."""
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("a", MIVAAdapterConfig(motion_lora_rank=2, use_ca_lora=True, ca_lora_rank=2))
    folder = tmp_path / "a"
    pipe.save_adapter("a", folder)
    with monkeypatch.context() as m:
        _crash_from_rename(m, 2, folders_only=True)
        with pytest.raises(_Crash):
            pipe.save_adapter("a", folder)
    assert not folder.exists()
    other = MIVAPipeline(**tiny_components(seed=0))
    assert other.load_adapters(folder, adapter_names="b") == ["b"]


def test_interrupted_delete_is_never_restored(tmp_path, monkeypatch):
    """`remove_folder` sets folders aside under another infix: a half-deleted folder is swept, not put back."""
    final = tmp_path / "out"
    _write(final, "old")
    (final / "y").write_text("y")

    def dying_rmtree(path, ignore_errors=False):
        next(Path(path).iterdir()).unlink()
        raise _Crash

    with monkeypatch.context() as m:
        m.setattr(shutil, "rmtree", dying_rmtree)
        with pytest.raises(_Crash):
            atomic.remove_folder(final)
    assert recover_folder(final) is False and not final.exists()
    _write(final, "new")
    assert _names(tmp_path) == ["out"]


# ------------------------------------------------------------------------------------------------- integrity
def _edit_metadata(path: Path, edit) -> None:
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata["miva_config"] = edit(metadata["miva_config"])
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("edit", ["motion_lora_scale", "whitespace"])
def test_edited_config_metadata_is_refused_by_the_integrity_check(tmp_path, edit):
    from miva.loaders.integrity import verify_checksum
    from miva.loaders.sources import read_safetensors

    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.add_adapter("a", MIVAAdapterConfig(motion_lora_rank=2, use_ca_lora=True, ca_lora_rank=2))
    pipe.save_adapter("a", tmp_path / "a")
    path = tmp_path / "a" / "miva_adapter.safetensors"
    tensors, metadata = read_safetensors(path)
    verify_checksum(path, tensors, metadata)  # untouched: accepted
    if edit == "motion_lora_scale":  # a value that changes what the adapter does
        _edit_metadata(path, lambda text: json.dumps({**json.loads(text), "motion_lora_scale": 64.0}))
    else:  # same config, other bytes: still not what was saved
        _edit_metadata(path, lambda text: text + " ")
    tensors, metadata = read_safetensors(path)
    message = f"{path} is corrupt: its content does not match the checksum stored when it was saved"
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        verify_checksum(path, tensors, metadata)
    with pytest.raises(ValueError, match="is corrupt"):
        MIVAPipeline(**tiny_components(seed=0)).load_adapters(path)


# ------------------------------------------------------------------------------------------ half-way verbs
@pytest.fixture
def two_adapters():
    from miva.loaders.adapter_state import adapter_state_dict

    pipe = MIVAPipeline(**tiny_components(seed=0))
    for name, seed in (("a", 1), ("b", 2)):
        pipe.add_adapter(name, MIVAAdapterConfig(motion_lora_rank=2, use_ca_lora=True, ca_lora_rank=2), activate=False)
        torch.manual_seed(seed)
        with torch.no_grad():
            for tensor in adapter_state_dict(pipe.unet, name).values():
                tensor.normal_()  # non-zero LoRA up weights: fusing would change the base weights
    pipe.set_adapters(["a", "b"], [0.5, 0.25], parallel_mode="weights")
    return pipe


@pytest.mark.parametrize("names", [["a", "nope"], ["b", "a", "nope"]])
def test_set_adapters_failing_half_way_changes_nothing(two_adapters, names):
    expect_clean_failure(two_adapters, lambda: two_adapters.set_adapters(names, [1.0] * len(names)))
    assert two_adapters.get_active_adapters() == ["a", "b"]


@pytest.mark.parametrize("lora_scale", [1.0, 0.5])
def test_fuse_adapters_failing_half_way_changes_nothing(two_adapters, lora_scale):
    before = take_snapshot(two_adapters)
    expect_clean_failure(two_adapters, lambda: two_adapters.fuse_adapters(["a", "nope"], lora_scale=lora_scale))
    assert take_snapshot(two_adapters).keys() == before.keys()
    assert two_adapters.unet.miva_context.active == [("a", 0.5), ("b", 0.25)]
    two_adapters.fuse_adapters(["a"])  # still usable: the valid name fuses now
    two_adapters.unfuse_adapters()


def test_set_adapters_with_lora_names_failing_half_way_changes_nothing(two_adapters):
    """A diffusers LoRA name before a MIVA weight that is refused (NaN): the LoRA scaling is not left changed."""
    from peft import LoraConfig
    from peft.tuners.tuners_utils import BaseTunerLayer

    pipe = two_adapters
    pipe.unet.add_adapter(LoraConfig(r=2, lora_alpha=2, target_modules=["to_q"]), adapter_name="style")
    pipe.set_adapters(["style", "a", "b"], [0.75, 0.5, 0.25], parallel_mode="weights")

    def scalings():
        return sorted({m.scaling["style"] for m in pipe.unet.modules()
                       if isinstance(m, BaseTunerLayer) and "style" in m.scaling})

    assert scalings() == [0.75]
    error = expect_clean_failure(pipe, lambda: pipe.set_adapters(["style", "a"], [0.1, float("nan")]))
    assert "weights" in str(error) and "finite" in str(error)
    assert scalings() == [0.75] and pipe.get_active_adapters() == ["a", "b", "style"]
