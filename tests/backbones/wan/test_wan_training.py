"""Training Wan adapters: the flow-matching loss against a written-out computation (frame 0 pinned and out of the
loss), gradients reach only the adapter, and a tiny run changes the video and round-trips through save/load."""

import torch
from wan_helpers import wan_inputs, wan_transformer

from miva.attention_processors import get_miva_adapter_modules, set_miva_adapters
from miva.backbones.wan.config import WanAdapterConfig
from miva.backbones.wan.install import add_wan_adapter
from miva.backbones.wan.tiny import tiny_wan_components
from miva.backbones.wan.training import encode_video_latents, train_wan_adapter, wan_flow_matching_loss
from miva.pipelines.pipeline_miva_wan import MIVAWanPipeline
from miva.tiny import make_test_image


def test_loss_equals_written_out_objective_and_ignores_frame_zero():
    model = wan_transformer()
    latents, _, text = wan_inputs(batch=2)
    loss = wan_flow_matching_loss(model, latents, text, torch.Generator().manual_seed(3), shift=5.0)
    g = torch.Generator().manual_seed(3)
    u = torch.rand(2, generator=g)
    sigma = 5 * u / (1 + 4 * u)
    noise = torch.randn(latents.shape, generator=g)
    noisy = (1 - sigma.view(2, 1, 1, 1, 1)) * latents + sigma.view(2, 1, 1, 1, 1) * noise
    noisy[:, :, 0] = latents[:, :, 0]
    pred = model(noisy, sigma * 1000, text).sample
    expected = ((pred - (noise - latents))[:, :, 1:] ** 2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-7)
    # Frame 0's prediction does not enter the loss.
    model.proj_out.register_forward_hook(lambda m, a, out: out + 100 * (torch.arange(out.shape[1]) < 4)[None, :, None])
    moved = wan_flow_matching_loss(model, latents, text, torch.Generator().manual_seed(3), shift=5.0)
    torch.testing.assert_close(moved, loss, rtol=1e-6, atol=1e-7)


def test_gradients_reach_only_the_adapter():
    model = wan_transformer()
    add_wan_adapter(model, "a", WanAdapterConfig(sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2",
                                                 ca_mode="implicit", implicit_rank=8))
    set_miva_adapters(model, "a")
    latents, _, text = wan_inputs(batch=1)
    before = {k: v.clone() for k, v in model.state_dict().items() if ".adapters." not in k}
    train_wan_adapter(model, "a", latents, text, steps=2, learning_rate=1e-3)
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items())
    modules = get_miva_adapter_modules(model, "a")
    assert modules["blocks.0.attn1.processor"].o.weight.abs().max() > 0  # zero-init output layers trained
    assert modules["blocks.1.attn2.processor"].CA3.weight.abs().max() > 0


def test_tiny_run_changes_the_video_and_round_trips(tmp_path):
    pipe = MIVAWanPipeline(**tiny_wan_components(0))
    clip = torch.linspace(-1, 1, 9).view(1, 1, 9, 1, 1).expand(1, 3, 9, 16, 16).clone()  # a brightening clip
    latents = encode_video_latents(pipe.vae, clip)
    embeds, _ = pipe.encode_prompt("", do_classifier_free_guidance=False, max_sequence_length=16)
    pipe.add_adapter("bright", WanAdapterConfig(sa_mode="first_prev", sa_first_frame_scale="linear"))
    image = make_test_image(16, 16)
    call = dict(image=image, num_frames=9, height=16, width=16, num_inference_steps=3, max_sequence_length=16,
                output_type="pt")
    before = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    losses = train_wan_adapter(pipe.transformer, "bright", latents, embeds, steps=30, learning_rate=3e-3)
    assert sum(losses[-5:]) < sum(losses[:5])
    after = pipe(generator=torch.Generator().manual_seed(0), **call).frames
    assert (after - before).abs().max() > 1e-3
    pipe.save_adapter("bright", tmp_path / "bright")
    fresh = MIVAWanPipeline(**tiny_wan_components(0))
    fresh.load_adapters(tmp_path / "bright")
    assert torch.equal(fresh(generator=torch.Generator().manual_seed(0), **call).frames, after)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the adapter's random inits (LoRA down, weight module, o below) alike in both runs
        model = wan_transformer()
        add_wan_adapter(model, "a", WanAdapterConfig(sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2",
                                                     use_motion_lora=True, motion_lora_rank=4))
        set_miva_adapters(model, "a")
        modules = get_miva_adapter_modules(model, "a")
        for module in modules.values():
            torch.nn.init.normal_(module.o.weight, std=0.1)
        if checkpointing:
            model.enable_gradient_checkpointing()
        model.train()
        latents, _, text = wan_inputs(batch=2)
        loss = wan_flow_matching_loss(model, latents, text, torch.Generator().manual_seed(0))
        loss.backward()
        grads = [p.grad.clone() for m in modules.values() for p in m.parameters()]
        results.append((loss.detach(), grads))
    assert sum(bool(g.abs().max() > 0) for g in results[0][1]) > len(results[0][1]) // 2  # LoRA down: 0 (up = 0)
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-6, atol=1e-7)
    for a, b in zip(results[0][1], results[1][1]):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-7)
