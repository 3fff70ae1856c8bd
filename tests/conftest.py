"""Shared fixtures: offline tiny components from :mod:`miva.tiny`, fresh for every test."""

import os

# Before diffusers / transformers are imported anywhere: never touch the network, keep the logs quiet.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
# Idle OpenMP threads sleep instead of spinning: tiny models gain nothing from spinning, and on a busy 2-core
# machine spinning threads slow each other down by an order of magnitude.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

from miva.attention_processors import MIVAContext, miva_call  # noqa: E402
from miva.tiny import make_test_image, tiny_components, tiny_unet_motion  # noqa: E402

torch.set_num_threads(2)


@pytest.fixture
def components():
    """A fresh ``tiny_components(seed=0)`` dict (2-D UNet + motion adapter, VAE, CLIP text/image parts, DDIM)."""
    return tiny_components(seed=0)


@pytest.fixture
def unet_motion():
    """A fresh tiny ``UNetMotionModel`` (seed 0, eval mode, up to 32 frames)."""
    return tiny_unet_motion(seed=0)


@pytest.fixture
def test_image():
    """A deterministic 64x64 RGB picture (gradient and shapes)."""
    return make_test_image(64, 64, seed=0)


def randomize_zero_init_parts(model, name: str, seed: int = 0, std: float = 0.3) -> list[str]:
    """Give the zero-initialised parameters of adapter `name` (LoRA `up`, cross-frame `to_out`, implicit-prompt `up`,
    motion embedding, imported out bias) seeded N(0, std^2) values, so that the adapter really acts; the parts with
    a non-zero init (LoRA `down`, the copied `to_q`) keep it. A fresh adapter is an exact no-op, so a test comparing
    outputs with a fresh adapter could not see it lost. `model`: a pipeline (its `unet`), a UNet, a processor or any
    module holding `adapters.<name>.` parameters. Returns the randomised parameter names (never empty)."""
    module = getattr(model, "unet", model)
    generator = torch.Generator().manual_seed(seed)
    marker = f"adapters.{name}."
    changed = []
    with torch.no_grad():
        for key, parameter in module.named_parameters():
            if (key.startswith(marker) or f".{marker}" in key) and not torch.any(parameter):
                parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=torch.float32) * std)
                changed.append(key)
    if not changed:
        raise AssertionError(f"adapter {name!r} has no zero-initialised parameter left to randomise in {type(module)}")
    return changed


@pytest.fixture(scope="session")
def randomize_adapter():
    """`randomize_adapter(model, name, seed=0, std=0.3)`: see `randomize_zero_init_parts`. Every test that compares
    outputs with an adapter uses it (or gives every adapter parameter random values itself) and asserts that the
    adapter changes the output."""
    return randomize_zero_init_parts


# ---------------------------------------------------------------------------------------- stand-alone processors
# Processor tests run one processor on a diffusers `Attention` outside any UNet. These helpers are the one place
# that sets up what the UNet would provide: the long-lived adapter bookkeeping (`MIVAContext`) and the per-call
# values its hooks would record (`miva_call`).


def standalone_processor(kind, attn=None, config=None, *, weight: float = 1.0, layer_name: str = "test.processor",
                         name: str = "a", **context_fields):
    """A processor of class `kind` with its own `MIVAContext(**context_fields)`; with `attn` and `config`, adapter
    `name` is added to it and active alone with `weight`."""
    processor = kind(MIVAContext(**context_fields), layer_name=layer_name)
    if config is not None:
        add_standalone_adapter(processor, attn, config, name=name, weight=weight)
    return processor


def add_standalone_adapter(processor, attn, config, *, name: str = "a", weight: float = 1.0) -> None:
    """Add adapter `name` (`config`) to a stand-alone processor and make it the only active one."""
    processor.add_adapter(attn, name, config)
    processor.context.configs[name] = config
    activate(processor, [(name, weight)])


def activate(target, entries) -> None:
    """Set the active `(name, weight)` list of a stand-alone processor's context (or of a `MIVAContext`), as
    `set_miva_adapters` does on a UNet (without its checks: the adapters may live in one processor only)."""
    context = target if isinstance(target, MIVAContext) else target.context
    context.active = [(n, float(w)) for n, w in entries]


def call_values(processor, *, size=None, **values):
    """`miva_call` on a stand-alone processor with what the UNet's hooks would have recorded: `size` = the level
    `(h, w)` of this layer; `values` (`num_frames`, `timestep`, `temb`, `adapter_prompts`, `attention_store`,
    `adapter_weights`) as `miva_call` takes them."""
    if size is not None:
        values["spatial_sizes"] = {processor.layer_name: tuple(size)}
    return miva_call(processor.context, **values)


def run_processor(processor, attn, *args, size=None, call=None, num_frames=None, **kwargs):
    """`processor(attn, *args, **kwargs)` inside `call_values(processor, size=size, **(call or {}))`, with
    `num_frames` (frames per video) among the call's values: the one route into a processor."""
    call = dict(call or {}, **({} if num_frames is None else {"num_frames": num_frames}))
    with call_values(processor, size=size, **call):
        return processor(attn, *args, **kwargs)
