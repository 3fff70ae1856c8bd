"""`block_hub(monkeypatch)`: every Hugging Face Hub download made through huggingface_hub's functions fails loudly;
`hub_cache(root, repo_id, files)`: files laid out as huggingface_hub's cache holds a repo, for offline Hub loads.

diffusers and transformers bind `hf_hub_download` / `snapshot_download` / `model_info` into their own modules, so
each loaded module's binding is replaced, not only huggingface_hub's."""

import importlib
import sys

HUB_FUNCTIONS = ("hf_hub_download", "snapshot_download", "model_info")
# Modules that call the Hub on from_pretrained; imported first so their bindings exist when replaced.
CALLERS = ("diffusers.utils.hub_utils", "diffusers.configuration_utils", "diffusers.models.modeling_utils",
           "diffusers.pipelines.pipeline_utils", "transformers.utils.hub")


def block_hub(monkeypatch) -> list:
    """Replace every binding of the Hub download functions; returns the list of attempted calls (should stay empty)."""
    import huggingface_hub

    for name in CALLERS:
        importlib.import_module(name)
    calls = []

    def refuse(*args, **kwargs):
        calls.append((args, kwargs))
        raise AssertionError(f"a Hugging Face Hub call was made: {args} {kwargs}")

    originals = {getattr(huggingface_hub, name) for name in HUB_FUNCTIONS}
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", {})
        for name, value in list(namespace.items()):
            if name in HUB_FUNCTIONS and any(value is original for original in originals):
                monkeypatch.setattr(module, name, refuse)
    return calls


def hub_cache(root, repo_id, files, sha="0123456789abcdef0123456789abcdef01234567"):
    """Lay `files` ({path in repo: source file}) out under `root` as huggingface_hub's cache holds a repo: blobs,
    snapshot symlinks, refs/main. Returns the snapshot's commit sha."""
    import os
    import shutil

    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(sha)
    for i, (path_in_repo, source) in enumerate(files.items()):
        blob = repo / "blobs" / f"{i:040d}"
        shutil.copy(source, blob)
        link = repo / "snapshots" / sha / path_in_repo
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return sha
