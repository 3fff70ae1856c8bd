"""Model cards (`README.md`) of saved adapters, and `push_adapter_to_hub` (Hub calls replaced, no network)."""

import copy
import shutil

import pytest
import torch
from bare_pipe import BarePipe
from huggingface_hub import ModelCard
from PIL import Image
from safetensors.torch import load_file

from miva.attention_processors import MIVAAdapterConfig
from miva.loaders import adapter_io as adapter_io_module
from miva.loaders import adapter_state_dict, miva_model_card
from miva.tiny import make_test_image, tiny_unet_motion

CONFIG = MIVAAdapterConfig(
    use_i2v=True, motion_lora_rank=2, use_ca_lora=True, ca_lora_rank=2, q_downsample=True, q_downsample_ratio=2,
    ca_pe_mode="rope_3d", prompt="clouds moving", base_model="stable-diffusion-v1-5/stable-diffusion-v1-5",
    motion_adapter="guoyww/animatediff-motion-adapter-v1-5-3",
)  # fmt: skip


@pytest.fixture(scope="module")
def pipe():
    pipe = BarePipe(tiny_unet_motion(seed=0))
    pipe.add_adapter("clouds", CONFIG)
    return pipe


@pytest.fixture
def sample_gif(tmp_path):
    frames = [make_test_image(32, 32, seed=s) for s in range(3)]
    path = tmp_path / "render.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=125, loop=0)
    return path


def test_card_metadata_parses_back(tmp_path):
    card = miva_model_card(CONFIG, adapter_name="clouds", repo_id="someone/miva-clouds", sample="sample.gif")
    card.save(tmp_path / "README.md")
    loaded = ModelCard.load(tmp_path / "README.md")
    data = loaded.data
    assert data.library_name == "diffusers" and data.pipeline_tag == "image-to-video"
    assert data.base_model == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert {"miva", "animatediff", "image-to-video", "ca-lora", "motion-lora", "spatiotemporal-query"} <= set(data.tags)
    assert "cross-frame-first" in data.tags and "implicit-prompt" not in data.tags
    assert 'pipe.load_adapters("someone/miva-clouds", adapter_names="clouds")' in loaded.text
    motion_adapter_id = "guoyww/animatediff-motion-adapter-v1-5-3"
    snippet = f'MotionAdapter.from_pretrained("{motion_adapter_id}", dtype=torch.float16)'
    assert snippet in loaded.text  # usage snippet, not a download
    assert "![sample](sample.gif)" in loaded.text and "clouds moving" in loaded.text


def test_local_base_model_stays_out_of_metadata(tmp_path):
    config = MIVAAdapterConfig(use_i2v=False, ca_mode="implicit", base_model=str(tmp_path))
    card = miva_model_card(config, adapter_name="local")
    assert card.data.base_model is None
    assert "implicit-prompt" in card.data.tags and "![sample]" not in card.text


def test_save_adapter_writes_card_and_sample(pipe, sample_gif, tmp_path):
    folder = pipe.save_adapter("clouds", tmp_path / "clouds", sample_gif=sample_gif)
    assert (folder / "sample.gif").read_bytes() == sample_gif.read_bytes()
    assert Image.open(folder / "sample.gif").n_frames == 3
    card = ModelCard.load(folder / "README.md")
    assert card.data.library_name == "diffusers" and "![sample](sample.gif)" in card.text
    assert 'pipe.load_adapters("path/to/clouds", adapter_names="clouds")' in card.text
    pipe.save_adapter("clouds", folder, sample_gif=folder / "sample.gif")  # saving over itself keeps the sample
    assert (folder / "sample.gif").read_bytes() == sample_gif.read_bytes()
    with pytest.raises(FileNotFoundError, match="sample_gif="):
        pipe.save_adapter("clouds", tmp_path / "x", sample_gif=tmp_path / "none.gif")


def test_push_adapter_to_hub_uploads_a_saved_folder(pipe, sample_gif, tmp_path, monkeypatch):
    calls = {}

    class _RepoUrl(str):
        repo_id = "someone/miva-clouds"

    def fake_create_repo(repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return _RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_upload_folder(*, repo_id, folder_path, **kwargs):
        calls["upload"] = (repo_id, kwargs)
        shutil.copytree(folder_path, tmp_path / "uploaded")  # the temp folder is gone after the call
        return "commit-info"

    monkeypatch.setattr(adapter_io_module, "create_repo", fake_create_repo)
    monkeypatch.setattr(adapter_io_module, "upload_folder", fake_upload_folder)
    with torch.no_grad():
        for tensor in adapter_state_dict(pipe.unet, "clouds").values():
            tensor.fill_(0.125)
    result = pipe.push_adapter_to_hub(
        "clouds", "someone/miva-clouds", private=True, token="tok", commit_message="first motion", sample_gif=sample_gif
    )
    assert result == "commit-info"
    assert calls["create"] == ("someone/miva-clouds", {"private": True, "token": "tok", "exist_ok": True})
    assert calls["upload"] == ("someone/miva-clouds", {"token": "tok", "commit_message": "first motion"})
    uploaded = tmp_path / "uploaded"
    assert sorted(p.name for p in uploaded.iterdir()) == [
        "README.md", "adapter_config.json", "miva_adapter.safetensors", "sample.gif"
    ]  # fmt: skip
    assert MIVAAdapterConfig.from_json_file(uploaded / "adapter_config.json") == CONFIG
    tensors = load_file(uploaded / "miva_adapter.safetensors")
    assert tensors.keys() == adapter_state_dict(pipe.unet, "clouds").keys()
    assert all(torch.equal(t, torch.full_like(t, 0.125)) for t in tensors.values())
    card = ModelCard.load(uploaded / "README.md")
    assert 'pipe.load_adapters("someone/miva-clouds"' in card.text and card.data.pipeline_tag == "image-to-video"


def test_card_for_a_second_pipe_with_copied_unet(pipe, tmp_path):
    """Cards are deterministic: the same adapter saved twice gives the same README."""
    other = BarePipe(copy.deepcopy(pipe.unet))
    a = pipe.save_adapter("clouds", tmp_path / "a")
    b = other.save_adapter("clouds", tmp_path / "b")
    assert (a / "README.md").read_text() == (b / "README.md").read_text()


def _snippet(card_text: str) -> str:
    return card_text.split("```python\n", 1)[1].split("```", 1)[0]


def _run_snippet(code: str, folder, monkeypatch) -> list:
    """Run a card's usage snippet in `folder` with every Hub download failing; returns its `video` frames."""
    from no_hub import block_hub

    hub = block_hub(monkeypatch)
    monkeypatch.chdir(folder)
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert not hub
    return scope["video"]


def test_world_adapter_card_shows_code_that_runs_offline(tmp_path, monkeypatch):
    """Issue 28 item 6: a world adapter's card loads `miva-world` with `miva.world.load_pipeline()`, not a Hub
    download + CUDA; its snippet, pointed at the shipped adapter, runs on the CPU and writes the GIF."""
    from miva.world import shipped_adapters

    folder = shipped_adapters()["right"]
    config = MIVAAdapterConfig.from_json_file(folder / "adapter_config.json")
    assert config.base_model == "miva-world" and config.motion_adapter == "miva-world/motion_adapter"
    card = miva_model_card(config, adapter_name="right", sample="sample.gif")
    assert card.data.base_model is None and card.data.license == "apache-2.0"  # not a Hub id; miva's license
    assert "MotionAdapter.from_pretrained" not in card.text and "cuda" not in card.text
    assert (folder / "README.md").read_text() == str(card)  # the shipped card is this one
    code = _snippet(card.text)
    assert "pipe = load_pipeline()" in code and 'pipe.load_adapters("path/to/right", adapter_names="right")' in code
    video = _run_snippet(code.replace("path/to/right", str(folder)), tmp_path, monkeypatch)
    assert len(video) == 8 and video[0].size == (64, 64)
    with Image.open(tmp_path / "output.gif") as gif:
        assert gif.n_frames == 8


def test_tiny_adapter_card_shows_code_that_runs_offline(tmp_path, monkeypatch):
    import dataclasses

    pipe = BarePipe(tiny_unet_motion(seed=0))  # what `--tiny` training records as its base: "miva.tiny"
    pipe.add_adapter("clouds", dataclasses.replace(CONFIG, base_model="miva.tiny", motion_adapter="miva.tiny"))
    folder = pipe.save_adapter("clouds", tmp_path / "clouds")
    card = ModelCard.load(folder / "README.md")
    assert card.data.base_model is None and "offline miva.tiny test model" in card.text
    code = _snippet(card.text)
    assert 'pipe = load_base("tiny")' in code
    video = _run_snippet(code.replace("path/to/clouds", str(folder)), tmp_path, monkeypatch)
    assert len(video) == 8 and video[0].size == (64, 64)
