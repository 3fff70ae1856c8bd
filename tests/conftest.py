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


@pytest.fixture
def accelerate_launch(tmp_path):
    """`launch(module, *args)` -> `(command, env)` that runs `python -m module *args` in two CPU processes.

    accelerate 1.15's `--cpu --num_processes 2` starts one process (multi-CPU needs mpirun), so the launch is
    `--multi_gpu` without GPUs: torchrun with the gloo backend, each process on the CPU, offline.
    """
    import os
    import socket
    import sys

    def launch(module: str, *args: str) -> tuple[list[str], dict[str, str]]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_VERBOSITY": "error", "HF_HOME": str(tmp_path / "hf")}
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                   "--main_process_port", str(port), "-m", module, *args]
        return command, env

    return launch


@pytest.fixture(scope="session")
def wan_world_base(tmp_path_factory):
    """A smoke MotionWorld Wan base folder: `pretrain_wan` with 2 + 2 + 2 steps (~20 s, once per session). Random-ish
    weights: for plumbing (names, folders, frame counts, cards), never for motion quality."""
    from miva.world.pretrain_wan import WanPretrainRecipe, pretrain_wan

    out = tmp_path_factory.mktemp("wan_world") / "base"
    return pretrain_wan(out, WanPretrainRecipe(vae_steps=2, transformer_steps=2, decoder_steps=2),
                       log=lambda message: None)


@pytest.fixture
def wan_world(monkeypatch, wan_world_base, tmp_path):
    """The registry's `miva-world-wan` pointed at the smoke base, and its shipped adapters at an empty temporary
    folder (`miva.world.WAN_ADAPTERS_PATH`). Returns the base folder."""
    import dataclasses

    import miva.base_registry as registry
    import miva.world as world
    import miva.world.adapters as world_adapters

    bases = tuple(dataclasses.replace(base, folder=wan_world_base) if base.name == registry.WORLD_WAN_ID else base
                  for base in registry.KNOWN_BASES)
    monkeypatch.setattr(registry, "KNOWN_BASES", bases)
    monkeypatch.setattr(world, "WAN_ADAPTERS_PATH", tmp_path / "wan_adapters")
    monkeypatch.setattr(world_adapters, "WAN_ADAPTERS_PATH", tmp_path / "wan_adapters")
    return wan_world_base
