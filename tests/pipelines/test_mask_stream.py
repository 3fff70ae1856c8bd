"""The mask stream in `MIVAPipeline(mask_branch=...)` (docs/mask_branch.md) on the tiny pipeline: shapes, a fresh
mask-branch adapter leaves the video exactly as it was, the stream runs once under CFG on the conditional prompt,
stride and cutoff decide which forwards carry it, and bad inputs are one-line errors."""

import pytest
import torch

from miva.attention_processors import MIVAAdapterConfig
from miva.attention_processors.mask_guidance import MaskGuidance
from miva.pipelines.mask_stream import MaskBranchInputs

F, SIZE = 4, 64


@pytest.fixture(scope="module")
def mpipe(pipe):
    pipe.add_adapter("m", MIVAAdapterConfig(use_mask_branch=True, motion_lora_rank=2, use_ca_lora=True, ca_lora_rank=2))
    yield pipe
    pipe.delete_adapters("m")


def _mask():
    mask = torch.zeros(SIZE, SIZE)
    mask[:, : SIZE // 2] = 1
    return mask


def _call(pipe, image, mask_branch=None, guidance_scale=1.0, steps=2, **kw):
    return pipe(image=image, prompt=kw.pop("prompt", "a cat"), num_frames=F, height=SIZE, width=SIZE,
                num_inference_steps=steps, guidance_scale=guidance_scale, output_type="pt",
                generator=torch.Generator().manual_seed(0), mask_branch=mask_branch, **kw)


def _rows_per_forward(pipe, fn):
    """(sample rows, text rows) of every UNet forward during `fn()`."""
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append((args[0].shape[0], kwargs["encoder_hidden_states"])), with_kwargs=True)
    try:
        out = fn()
    finally:
        hook.remove()
    return out, seen


def test_shapes_and_frame0(mpipe, image):
    out = _call(mpipe, image, MaskBranchInputs({"m": _mask()}), prompt=["a cat", "a dog"])
    assert out.frames.shape == (2, F, 3, SIZE, SIZE)
    assert set(out.masks) == {"m"} and out.masks["m"].shape == (2, F, SIZE, SIZE)
    assert torch.equal(out.masks["m"][:, 0], _mask().expand(2, -1, -1))
    assert out.masks["m"].min() >= 0 and out.masks["m"].max() <= 1
    assert _call(mpipe, image).masks is None


@pytest.mark.parametrize("guidance_scale", [1.0, 3.0], ids=["no-cfg", "cfg"])
def test_fresh_mask_branch_leaves_the_video_alone(mpipe, image, guidance_scale):
    plain = _call(mpipe, image, guidance_scale=guidance_scale).frames
    masked = _call(mpipe, image, {"masks": {"m": _mask()}}, guidance_scale=guidance_scale).frames
    assert torch.allclose(plain, masked, atol=1e-5), (plain - masked).abs().max()


def test_cfg_runs_the_stream_once_on_the_conditional_prompt(mpipe, image, monkeypatch):
    gates = []
    original = MaskGuidance.gate
    monkeypatch.setattr(MaskGuidance, "gate", lambda self, *a, **k: gates.append(original(self, *a, **k)) or gates[-1])
    out, seen = _rows_per_forward(mpipe, lambda: _call(mpipe, image, {"masks": {"m": _mask()}}, guidance_scale=3.0))
    assert [rows for rows, _ in seen] == [3, 3]  # uncond video, cond video, one mask stream
    for _, text in seen:
        assert text.shape[0] == 3 * F
        assert torch.equal(text[2 * F :], text[F : 2 * F])  # the stream reads the conditional prompt
        assert not torch.equal(text[:F], text[F : 2 * F])
    assert gates
    for gate in gates:  # (3F, tokens, 1) at cross-attention, (2F, tokens, 1) at self-attention (video rows only)
        assert gate.shape[0] in (2 * F, 3 * F)
        assert torch.equal(gate[:F], gate[F : 2 * F])  # the same mask on both CFG halves
        assert gate[:F].min() == 0  # the left-half mask, not ones
        if gate.shape[0] == 3 * F:
            assert torch.equal(gate[2 * F :], torch.ones_like(gate[2 * F :]))  # the stream itself is not gated
    assert out.masks["m"].shape == (1, F, SIZE, SIZE)


@pytest.mark.parametrize(("stride", "cutoff", "expected"), [(1, 1.0, [2, 2, 2, 2]), (2, 1.0, [2, 1, 2, 1]),
                                                             (1, 0.5, [2, 2, 1, 1]), (3, 0.25, [2, 1, 1, 1])])
def test_stride_and_cutoff(mpipe, image, stride, cutoff, expected):
    inputs = MaskBranchInputs({"m": _mask()}, mask_inference_stride=stride, mask_inference_cutoff=cutoff)
    _, seen = _rows_per_forward(mpipe, lambda: _call(mpipe, image, inputs, steps=4))
    assert [rows for rows, _ in seen] == expected


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(masks={}), r"^mask_branch.masks={} must be a non-empty dict: adapter name -> its frame-0 mask$"),
    (dict(mask_inference_stride=0), r"^mask_inference_stride=0 must be a positive int \(predict the mask stream"),
    (dict(mask_inference_cutoff=1.5), r"^mask_inference_cutoff=1.5 must be a number in \(0, 1\]"),
    (dict(mask_attention_mode="TA"), r"^mask_attention_mode='TA' is not supported: the MotionLoRA is a delta"),
    (dict(use_image_guidance="yes"), r"^use_image_guidance='yes' must be true or false$"),
])
def test_input_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MaskBranchInputs(**{"masks": {"m": _mask()}, **kwargs})


def test_call_errors(mpipe, image):
    with pytest.raises(ValueError, match=r"^mask_branch.masks: 'x' is not an active adapter with a mask branch; "
                                         r"valid: \['m'\]$"):
        _call(mpipe, image, {"masks": {"x": _mask()}})
    with pytest.raises(ValueError, match=r"^mask_branch.masks\['m'\] has shape \(1, 1, 32, 32\); give \(H, W\) or "
                                         r"\(1, H, W\)$"):
        _call(mpipe, image, {"masks": {"m": torch.zeros(1, 1, 32, 32)}})
    with pytest.raises(ValueError, match=r"^mask_branch.masks\['m'\] has values outside \[0, 1\]$"):
        _call(mpipe, image, {"masks": {"m": _mask() * 2}})
    with pytest.raises(ValueError, match=r"^mask_branch: unknown field 'm'; the fields are \['masks', "):
        _call(mpipe, image, {"m": _mask()})
    with pytest.raises(ValueError, match=r"^mask_branch: not supported together with ca_map_resolutions"):
        _call(mpipe, image, {"masks": {"m": _mask()}}, ca_map_resolutions="all")


def test_mask_of_another_size_and_a_path(tmp_path):
    from PIL import Image

    from miva.pipelines.mask_stream import mask_from_input

    small = torch.zeros(32, 32)
    small[:, :16] = 1
    resized = mask_from_input(small, "m", 2, SIZE, SIZE)  # scaled 2x like the image (bicubic): the edge blurs
    assert resized.shape == (2, SIZE, SIZE)
    assert torch.allclose(resized[..., :30], torch.ones(2, SIZE, 30), atol=1e-3)
    assert torch.allclose(resized[..., 34:], torch.zeros(2, SIZE, 30), atol=1e-3)
    Image.fromarray((_mask().numpy() * 255).astype("uint8")).save(tmp_path / "mask.png")
    assert torch.equal(mask_from_input(str(tmp_path / "mask.png"), "m", 1, SIZE, SIZE), _mask()[None])
    with pytest.raises(ValueError, match=r"^mask_branch.masks\['m'\]: '.*missing.png' is not a file$"):
        mask_from_input(str(tmp_path / "missing.png"), "m", 1, SIZE, SIZE)


def test_adapter_masks_compose_with_the_mask_branch(mpipe, image):
    """A user's `adapter_masks` gate and the mask branch's region gate multiply (one gated composition): a varying
    mask changes the video, a mask of ones does not."""
    from miva.attention_processors import get_miva_adapter_modules

    params = [p for module in get_miva_adapter_modules(mpipe.unet, "m").values() for p in module.parameters()]
    saved = [p.detach().clone() for p in params]
    generator = torch.Generator().manual_seed(1)
    try:
        with torch.no_grad():
            for p in params:  # a trained-looking adapter: every delta non-zero
                p.add_(torch.randn(p.shape, generator=generator) * 0.05)
        guided = {"masks": {"m": _mask()}}
        right = 1 - _mask()
        alone = _call(mpipe, image, guided).frames
        ones = _call(mpipe, image, guided, adapter_masks={"m": torch.ones(SIZE, SIZE)}).frames
        masked = _call(mpipe, image, guided, adapter_masks={"m": right}).frames
    finally:
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
    assert torch.equal(ones, alone)
    assert not torch.allclose(masked, alone, atol=1e-4)
