"""Official MIVA-Wan checkpoints: imported through `convert_official_wan_state_dict` / `load_official_wan_adapter`,
the transformer gives the official forward's output (written out below from the official module structure, on the
stock diffusers transformer) within 1e-5 relative, for every SA mode and weight kind and both CA modes."""

import json
import math
from pathlib import Path

import pytest
import torch
from wan_helpers import wan_inputs, wan_transformer

from miva.attention_processors import set_miva_adapters
from miva.backbones.wan.io import load_official_wan_adapter
from miva.backbones.wan.official import convert_official_wan_state_dict

DIM, HEADS, RANK, BLOCKS = 24, 2, 8, 2


def official_checkpoint(sa_mode, scale, ca_mode, seed=0, frozen_copies=True):
    """A random official checkpoint (flat, keys relative to the DiT) for the tiny transformer."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, mean=0.0):
        return mean + 0.3 * torch.randn(*shape, generator=g)

    out = {}
    for i in range(BLOCKS):
        if sa_mode is not None:
            names = ["q", "o"] + (["k", "v"] if frozen_copies else [])
            for name in names:
                out[f"blocks.{i}.i2v_adapter.{name}.weight"] = r(DIM, DIM)
                out[f"blocks.{i}.i2v_adapter.{name}.bias"] = r(DIM)
            if frozen_copies:
                out[f"blocks.{i}.i2v_adapter.norm_q.weight"] = r(DIM, mean=1.0)
                out[f"blocks.{i}.i2v_adapter.norm_k.weight"] = r(DIM, mean=1.0)
            if isinstance(scale, str) and scale.startswith("adaptive"):
                out[f"blocks.{i}.i2v_adapter.weight_module.linear.weight"] = r(2, DIM)
                out[f"blocks.{i}.i2v_adapter.weight_module.linear.bias"] = r(2)
        if ca_mode == "simple":
            out[f"blocks.{i}.cross_attn.CA2.weight"] = r(RANK, DIM)
            out[f"blocks.{i}.cross_attn.CA2.bias"] = r(RANK)
            out[f"blocks.{i}.cross_attn.CA_norm.weight"] = r(RANK, mean=1.0)
            out[f"blocks.{i}.cross_attn.CA_norm.bias"] = r(RANK)
            out[f"blocks.{i}.cross_attn.CA3.weight"] = r(DIM, RANK)
            out[f"blocks.{i}.cross_attn.CA3.bias"] = r(DIM)
    return out


def dit_kwargs(sa_mode, scale, ca_mode):
    return {"dit_kwargs": {"SA_mode": sa_mode, "SA_kwargs": {"sa_first_frame_scale": scale}, "CA_mode": ca_mode,
                           "CA_kwargs": {"rank": RANK, "act": "gelu", "norm_mid": True, "use_out": True}}}


# ------------------------------------------------------------------- the official forward, written out (batch 1)


def rms(x, weight, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def official_i2v(p, x, frames, mode, s, exact_first):
    """The official i2v_adapter on x (1, frames*n, dim): own q/k/v/o and RMS norms, no rotary."""
    q = rms(x @ p["q.weight"].T + p["q.bias"], p["norm_q.weight"])[0]
    k = rms(x @ p["k.weight"].T + p["k.bias"], p["norm_k.weight"])[0]
    v = (x @ p["v.weight"].T + p["v.bias"])[0]
    n, d = x.shape[1] // frames, DIM // HEADS
    q, k, v = (t.reshape(frames, n, HEADS, d) for t in (q, k, v))
    outs = []
    for f in range(frames):
        prev = max(f - 1, 0)
        if mode == "first":
            keys, values = k[0], v[0]
            if exact_first:  # the official bug: frame f sees the f-th 1/F slice of frame 0's tokens
                keys, values = k[0, f * n // frames:(f + 1) * n // frames], v[0, f * n // frames:(f + 1) * n // frames]
        elif mode == "prev":
            keys, values = k[prev], v[prev]
        else:
            keys, values = torch.cat([k[0], k[prev]]), torch.cat([s * v[0], (1 - s) * v[prev]])
        scores = torch.einsum("nhd,mhd->hnm", q[f], keys) / math.sqrt(d)
        scores = torch.exp(scores - scores.amax(-1, keepdim=True))
        outs.append(torch.einsum("hnm,mhd->nhd", scores / scores.sum(-1, keepdim=True), values))
    out = torch.cat(outs).reshape(1, frames * n, DIM)
    return out @ p["o.weight"].T + p["o.bias"]


def official_implicit(p, attn, x):
    q_n = rms(x @ attn.to_q.weight.T + attn.to_q.bias, attn.norm_q.weight)
    h = torch.nn.functional.layer_norm(q_n @ p["CA2.weight"].T + p["CA2.bias"], (RANK,), p["CA_norm.weight"],
                                       p["CA_norm.bias"], eps=1e-5)
    return torch.nn.functional.gelu(h) @ p["CA3.weight"].T + p["CA3.bias"]


def official_output(checkpoint, sa_mode, scale, ca_mode, latents, t, text, exact_first=False):
    """The stock transformer with every block's forward replaced by the official block (test-only patching)."""
    model = wan_transformer()
    seen = {}
    model.condition_embedder.register_forward_hook(lambda m, a, out: seen.update(temb=out[0]))
    frames = latents.shape[2]

    def block_forward(i, block):
        def forward(x, text_h, temb6, rotary):
            base = {}
            for name, m in (("q", block.attn1.to_q), ("k", block.attn1.to_k), ("v", block.attn1.to_v)):
                base[f"{name}.weight"], base[f"{name}.bias"] = m.weight, m.bias
            base["norm_q.weight"], base["norm_k.weight"] = block.attn1.norm_q.weight, block.attn1.norm_k.weight
            p = {**base, **{k.split("i2v_adapter.")[1]: v for k, v in checkpoint.items()
                            if k.startswith(f"blocks.{i}.i2v_adapter.")}}
            c = {k.split("cross_attn.")[1]: v for k, v in checkpoint.items() if k.startswith(f"blocks.{i}.cross_attn.")}
            shift, sc, gate, c_shift, c_scale, c_gate = (block.scale_shift_table + temb6.float()).chunk(6, dim=1)
            x = x + block.attn1(block.norm1(x) * (1 + sc) + shift, None, None, rotary) * gate
            if sa_mode is not None:
                s = scale
                if scale == "linear":
                    s = t[0] / 1000
                elif isinstance(scale, str):
                    logits = torch.nn.functional.silu(seen["temb"]) @ p["weight_module.linear.weight"].T
                    s = ((logits + p["weight_module.linear.bias"]) / float(scale.split("_")[1])).softmax(-1)[0, 0]
                x = x + official_i2v(p, x, frames, sa_mode, s, exact_first)
            if ca_mode == "simple":
                x = x + official_implicit(c, block.attn2, block.norm2(x))
            else:
                x = x + block.attn2(block.norm2(x), text_h, None, None)
            return x + block.ffn(block.norm3(x) * (1 + c_scale) + c_shift) * c_gate

        return forward

    for i, block in enumerate(model.blocks):
        block.forward = block_forward(i, block)
    with torch.no_grad():
        return model(latents, t, text).sample


def miva_output(checkpoint, sa_mode, scale, ca_mode, latents, t, text, **kwargs):
    model = wan_transformer()
    load_official_wan_adapter(model, "official", checkpoint, dit_kwargs(sa_mode, scale, ca_mode), **kwargs)
    set_miva_adapters(model, "official")
    with torch.no_grad():
        return model(latents, t, text).sample


def assert_relative(ours, expected, tol=1e-5):
    error = (ours - expected).abs().max() / expected.abs().max()
    assert error <= tol, f"relative error {error:.3g}"


CASES = [(sa, sc) for sa, sc in [("first", 0.5), ("prev", 0.5), ("first_prev", 0.3), ("first_prev", "linear"),
                                  ("first_prev", "adaptive_0.2")]]


@pytest.mark.parametrize("ca_mode", ["vanilla", "simple"])
@pytest.mark.parametrize("sa_mode,scale", CASES)
def test_official_import_equals_official_forward(sa_mode, scale, ca_mode):
    latents, t, text = wan_inputs(batch=1, frames=3, size=4)
    checkpoint = official_checkpoint(sa_mode, scale, ca_mode)
    expected = official_output(checkpoint, sa_mode, scale, ca_mode, latents, t, text)
    assert (expected - wan_transformer()(latents, t, text).sample).abs().max() > 1e-2  # the adapter matters
    assert_relative(miva_output(checkpoint, sa_mode, scale, ca_mode, latents, t, text), expected)


def test_implicit_prompt_alone_and_frozen_copies_rebuilt_from_the_base():
    latents, t, text = wan_inputs(batch=1, frames=3, size=4)
    checkpoint = official_checkpoint(None, 0.5, "simple")
    assert_relative(miva_output(checkpoint, None, 0.5, "simple", latents, t, text),
                    official_output(checkpoint, None, 0.5, "simple", latents, t, text))
    checkpoint = official_checkpoint("first_prev", "adaptive_0.2", "vanilla", frozen_copies=False)
    assert not any(".k." in k or "norm_q" in k for k in checkpoint)
    assert_relative(miva_output(checkpoint, "first_prev", "adaptive_0.2", "vanilla", latents, t, text),
                    official_output(checkpoint, "first_prev", "adaptive_0.2", "vanilla", latents, t, text))


def test_first_mode_bug_only_under_research_exact_switch():
    latents, t, text = wan_inputs(batch=1, frames=4, size=8)  # 16 tokens per frame, 4 frames
    checkpoint = official_checkpoint("first", 0.5, "vanilla")
    buggy = official_output(checkpoint, "first", 0.5, "vanilla", latents, t, text, exact_first=True)
    fixed = official_output(checkpoint, "first", 0.5, "vanilla", latents, t, text, exact_first=False)
    assert (buggy - fixed).abs().max() > 1e-2
    assert_relative(miva_output(checkpoint, "first", 0.5, "vanilla", latents, t, text, research_exact_first=True),
                    buggy)
    assert_relative(miva_output(checkpoint, "first", 0.5, "vanilla", latents, t, text), fixed)


def test_official_settings_and_keys_refused_clearly():
    model = wan_transformer()
    checkpoint = official_checkpoint("first", 0.5, "simple")
    settings = dit_kwargs("first", 0.5, "simple")
    settings["dit_kwargs"]["CA_kwargs"]["use_out"] = False
    with pytest.raises(ValueError, match=r"dit_kwargs.CA_kwargs.use_out=False is not supported"):
        convert_official_wan_state_dict(checkpoint, base=model, official_config=settings)
    with pytest.raises(ValueError, match=r"dit_kwargs.SA_mode='firstt' is not one of"):
        convert_official_wan_state_dict(checkpoint, base=model, official_config=dit_kwargs("firstt", 0.5, "simple"))
    extra = {**checkpoint, "blocks.0.self_attn.q.lora_A.weight": torch.zeros(4, DIM)}
    with pytest.raises(ValueError, match=r"key 'blocks.0.self_attn.q.lora_A.weight' cannot be imported"):
        convert_official_wan_state_dict(extra, base=model, official_config=dit_kwargs("first", 0.5, "simple"))
    missing = {k: v for k, v in checkpoint.items() if k != "blocks.1.i2v_adapter.o.weight"}
    with pytest.raises(ValueError, match=r"lacks 'blocks.1.i2v_adapter.o.weight'"):
        convert_official_wan_state_dict(missing, base=model, official_config=dit_kwargs("first", 0.5, "simple"))
    deeper = {**checkpoint, "blocks.2.i2v_adapter.o.bias": torch.zeros(DIM)}
    with pytest.raises(ValueError, match=r"block 2 .* but the base has 2 blocks"):
        convert_official_wan_state_dict(deeper, base=model, official_config=dit_kwargs("first", 0.5, "simple"))
    wrong = {**checkpoint, "blocks.0.cross_attn.CA2.weight": torch.zeros(RANK + 1, DIM)}
    with pytest.raises(ValueError, match=r"has shape \(9, 24\) in the file"):
        load_official_wan_adapter(model, "x", wrong, dit_kwargs("first", 0.5, "simple"))
    assert model.miva_context.configs == {}  # all or nothing


def test_convert_command_writes_a_folder_that_loads_to_the_official_output(tmp_path):
    import yaml

    from miva.backbones.wan.convert import main
    from miva.backbones.wan.io import load_wan_adapter

    checkpoint = official_checkpoint("first_prev", "adaptive_0.2", "simple", frozen_copies=False)  # base: --tiny
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(dit_kwargs("first_prev", "adaptive_0.2", "simple")))
    assert main(["--checkpoint", str(tmp_path / "checkpoint.pt"), "--yaml", str(tmp_path / "run.yaml"), "--tiny",
                 "--out", str(tmp_path / "waves")]) == 0
    latents, t, text = wan_inputs(batch=1, frames=3, size=4)
    model = wan_transformer()
    load_wan_adapter(model, tmp_path / "waves", "waves")
    set_miva_adapters(model, "waves")
    with torch.no_grad():
        ours = model(latents, t, text).sample
    assert_relative(ours, official_output(checkpoint, "first_prev", "adaptive_0.2", "simple", latents, t, text))


def test_miva_convert_takes_the_official_run_and_refuses_what_it_lacks(tmp_path, capsys):
    """`miva convert` (the main command) on an official run: the same folder as the module's converter, whose
    forward equals the official one; missing --checkpoint / --base and a research-only flag named in one line."""
    import yaml

    from miva.backbones.wan.io import load_wan_adapter
    from miva.cli import main as cli

    checkpoint = official_checkpoint("prev", 0.5, "simple", seed=4, frozen_copies=False)
    torch.save(checkpoint, tmp_path / "checkpoint.pt")
    (tmp_path / "waves run.yaml").write_text(yaml.safe_dump(dit_kwargs("prev", 0.5, "simple")))
    run_yaml = str(tmp_path / "waves run.yaml")
    assert cli(["convert", "--config", run_yaml, "--checkpoint", str(tmp_path / "checkpoint.pt"), "--base",
                "tiny-wan", "--out", str(tmp_path / "out")]) == 0
    folder = tmp_path / "out" / "waves_run"  # the YAML's file name, sanitised
    assert json.loads((folder / "adapter_config.json").read_text())["backbone"] == "wan2.1-dit"
    latents, t, text = wan_inputs(batch=1, frames=3, size=4)
    model = wan_transformer()
    load_wan_adapter(model, folder, "w")
    set_miva_adapters(model, "w")
    with torch.no_grad():
        ours = model(latents, t, text).sample
    assert_relative(ours, official_output(checkpoint, "prev", 0.5, "simple", latents, t, text))
    capsys.readouterr()
    cases = [
        (["--base", "tiny-wan"], "miva convert: error: --checkpoint: required with "),
        (["--checkpoint", str(tmp_path / "checkpoint.pt")],
         "miva convert: error: --base: required for an official MIVA-Wan checkpoint (a diffusers Wan folder, a Hub "
         "id, or tiny-wan), or --tiny"),
    ]
    for extra, message in cases:
        assert cli(["convert", "--config", run_yaml, "--out", str(tmp_path / "x"), *extra]) == 2
        assert capsys.readouterr().err.splitlines()[0].startswith(message)
    research = str(tmp_path.parent / "research.yaml")
    Path(research).write_text("output_dir: o\nunet_checkpoint_path: a.safetensors\n")
    assert cli(["convert", "--config", research, "--checkpoint", "c.pt", "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.splitlines()[0] == (
        f"miva convert: error: --checkpoint: only for an official MIVA-Wan run YAML (with dit_kwargs); {research} "
        "is a research config, which names its checkpoints (unet_checkpoint_path) and base itself")
