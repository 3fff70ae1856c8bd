"""The MotionWorld Wan base's frame-wise VAE (issue 31): `make_vae_framewise` codes every frame as the VAE coded frame
0, so a clip's latents are its frames' latents (no motion smeared across frames), and `pretrain_wan --init-from
FOLDER --reuse vae` keeps an earlier autoencoder, makes it frame-wise and trains the transformer anew."""

import json

import pytest
import torch
from diffusers import WanPipeline

import miva.base_registry as registry
from miva.world.wan_architecture import _vae, is_vae_framewise, make_vae_framewise


def _clip(frames: int = 5) -> torch.Tensor:
    """A moving clip ``(1, 3, frames, 16, 16)``: a bright square drifting right one pixel a frame on noise."""
    generator = torch.Generator().manual_seed(3)
    video = torch.rand(1, 3, frames, 16, 16, generator=generator) * 0.4 - 0.8
    for t in range(frames):
        video[:, :, t, 4:10, 2 + t:8 + t] = 0.9
    return video


def _frame_by_frame(code, video: torch.Tensor) -> torch.Tensor:
    """``code`` applied to each frame of ``(batch, channels, frames, h, w)`` alone, concatenated on frames."""
    return torch.cat([code(video[:, :, t:t + 1]) for t in range(video.shape[2])], dim=2)


@torch.no_grad()
def test_a_framewise_vae_codes_each_frame_alone_and_keeps_frame_0():
    torch.manual_seed(0)
    vae = _vae().eval()
    for conv in vae.modules():  # a trained VAE's past taps are not zero; random ones must not be either
        assert not hasattr(conv, "_padding") or conv.kernel_size[0] == 1 or conv.weight[:, :, :-1].abs().sum() > 0
    video = _clip()

    def encode(x):
        return vae.encode(x).latent_dist.mode()

    before = encode(video)
    assert not is_vae_framewise(vae)
    assert not torch.allclose(before, _frame_by_frame(encode, video), atol=1e-3)  # the clip VAE mixes frames

    assert make_vae_framewise(vae) == 30 and is_vae_framewise(vae)
    after = encode(video)
    torch.testing.assert_close(after[:, :, :1], before[:, :, :1], rtol=0, atol=1e-6)  # frame 0 coded as before
    torch.testing.assert_close(after, _frame_by_frame(encode, video), rtol=0, atol=1e-5)
    assert not torch.allclose(after[:, :, 1:], before[:, :, 1:], atol=1e-3)
    decoded = vae.decode(after).sample
    assert decoded.shape == video.shape
    torch.testing.assert_close(decoded, _frame_by_frame(lambda z: vae.decode(z).sample, after), rtol=0, atol=1e-5)


def test_the_shipped_wan_base_is_framewise():
    from miva.world import load_pipeline

    record = json.loads((registry.WORLD_WAN_PATH / "pretrain_log.json").read_text())
    assert record["recipe"]["framewise_vae"] is True
    assert is_vae_framewise(load_pipeline(base="wan").vae)


def test_reuse_vae_makes_an_earlier_clip_vae_framewise_and_retrains_the_transformer(tmp_path):
    """An earlier base with a clip-mixing VAE (`--no-framewise-vae`); `--reuse vae` keeps its autoencoder and text
    encoder (frame 0's latents stay the same), zeroes the past taps, sets new latent statistics and trains phase 2;
    the log and card say which phase came from where."""
    from miva.world.pretrain_wan import WanPretrainRecipe, main, pretrain_wan

    earlier = tmp_path / "clip_vae"
    assert main(["--out", str(earlier), "--vae-steps", "2", "--transformer-steps", "1", "--warmup", "1",
                 "--no-framewise-vae"]) == 0
    first = json.loads((earlier / "pretrain_log.json").read_text())
    assert first["command"].endswith("--vae-steps 2 --transformer-steps 1 --no-framewise-vae")
    assert first["recipe"]["framewise_vae"] is False and "phases_from" not in first
    before = WanPipeline.from_pretrained(earlier)
    assert not is_vae_framewise(before.vae)

    lines = []
    out = pretrain_wan(tmp_path / "again", WanPretrainRecipe(init_from=str(earlier), reuse="vae", transformer_steps=3,
                                                             warmup=1), log=lines.append)
    assert lines[:2] == [f"vae from {earlier}", "vae: frame-wise (30 causal convolutions)"]
    assert any(line.startswith("transformer step 3/3") for line in lines)
    assert not any(line.startswith("vae step") for line in lines)
    after = WanPipeline.from_pretrained(out)
    assert is_vae_framewise(after.vae)
    for key, value in before.text_encoder.state_dict().items():
        assert torch.equal(after.text_encoder.state_dict()[key], value), key
    past = [k for k, v in after.vae.state_dict().items() if v.ndim == 5 and v.shape[2] == 3]
    for key, value in before.vae.state_dict().items():  # only the past taps of the causal convolutions changed
        expected = torch.cat([torch.zeros_like(value[:, :, :-1]), value[:, :, -1:]], 2) if key in past else value
        assert torch.equal(after.vae.state_dict()[key], expected), key
    record = json.loads((out / "pretrain_log.json").read_text())
    assert record["phases_from"] == {"vae": first["machine"]} and record["vae_seconds"] == first["vae_seconds"]
    assert record["recipe"]["vae_steps"] == 2 and record["recipe"]["transformer_steps"] == 3
    assert record["recipe"]["framewise_vae"] is True and record["latents_std"] != first["latents_std"]
    assert after.vae.config.latents_std == record["latents_std"]
    assert record["command"].endswith("--seed 0 --vae-steps 2 --transformer-steps 3")
    card = (out / "README.md").read_text()
    assert "then made frame-wise" in card and "then made frame-wise" not in (earlier / "README.md").read_text()
    assert "(autoencoder taken with `--init-from` from an earlier folder)." in card


def test_reuse_errors_name_the_field(tmp_path):
    from miva.world.pretrain_wan import WanPretrainRecipe, pretrain_wan

    with pytest.raises(ValueError, match=r"reuse='transformer' is not a choice; give one of \['vae', "
                                         r"'vae,transformer'\]"):
        pretrain_wan(tmp_path / "out", WanPretrainRecipe(init_from=str(tmp_path), reuse="transformer"))
