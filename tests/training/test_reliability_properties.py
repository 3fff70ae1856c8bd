"""Property tests (hypothesis): random mutations of valid inputs give a correct result or one clean error naming the
input, and a failed call changes nothing (issue 12).

- adapter configs (`MIVAAdapterConfig.from_dict` and `adapter_config.json`), YAML configs (`load_config`), pipeline
  arguments (`MIVAPipeline.__call__`): one value replaced, a key dropped or an unknown key added;
- adapter files: random truncations and bit flips of `miva_adapter.safetensors` / `adapter_config.json`, loaded
  next to an adapter that must stay bit-identical.

CI runs few examples (derandomized, so every run tries the same cases). `MIVA_HYPOTHESIS_EXAMPLES=500` runs more,
randomly; `MIVA_RELIABILITY_REPORT=counts.json` writes how each kind of case ended (the counts in the issue note).
"""

import copy
import json
import math
import os
import shutil
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from state_snapshot import assert_same_snapshot, take_snapshot

from miva import MIVAAdapterConfig, MIVAPipeline, load_config
from miva.attention_processors import add_miva_adapter
from miva.loaders import adapter_state_dict
from miva.loaders.adapter_io import discard_adapter
from miva.tiny import make_test_image, tiny_components, tiny_unet_motion

EXAMPLES = int(os.environ.get("MIVA_HYPOTHESIS_EXAMPLES", "0"))
CI = EXAMPLES == 0


def examples(ci: int):
    """Hypothesis settings: `ci` examples, derandomized, in CI; `MIVA_HYPOTHESIS_EXAMPLES` random ones otherwise."""
    return settings(
        max_examples=ci if CI else EXAMPLES,
        deadline=None,
        derandomize=CI,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


OUTCOMES: dict[str, Counter] = defaultdict(Counter)


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    path = os.environ.get("MIVA_RELIABILITY_REPORT")
    if path:
        old = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        old.update({kind: dict(counts) for kind, counts in OUTCOMES.items()})
        Path(path).write_text(json.dumps(old, indent=2, sort_keys=True))


def clean_error(kind: str, error: BaseException, *names: str) -> None:
    """`error` must be a ValueError / TypeError whose message names one of `names` (the key, argument or file)."""
    assert isinstance(error, (ValueError, TypeError)), f"{kind}: {type(error).__name__}: {error}"
    assert any(name in str(error) for name in names), f"{kind}: the error does not name {names}: {error}"
    assert "\n" not in str(error).strip() or kind == "pipeline", f"{kind}: error message is not one line: {error!r}"
    OUTCOMES[kind]["clean error"] += 1


# Values a hostile or careless user passes: wrong types, NaN / inf, zero, negative, huge, empty, nested.
HOSTILE = [
    None, True, False, 0, 1, -1, 2, 3, 7, 8, 64, 10**15, -(10**15), 0.0, 0.5, -0.5, 1.5, 1e300,
    math.nan, math.inf, -math.inf, "", "abc", "null", "first", "rope_3d", "adaptive_0.2", "adaptive_nan",
    [], [1], [math.nan], ["x", "y"], {}, {"a": 1},
]  # fmt: skip
hostile = st.sampled_from(HOSTILE) | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8)


def _same_value(a, b) -> bool:
    return type(a) is type(b) and (a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


# ------------------------------------------------------------------------------------------- adapter configs
CONFIG_BASES = [
    MIVAAdapterConfig().to_dict(),
    MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=4, motion_lora_rank=4, q_downsample=True, ca_pe_mode="rope_3d",
                      sa_mode="first_prev", sa_first_frame_scale="adaptive_0.2").to_dict(),
    MIVAAdapterConfig(use_i2v=False, ca_mode="implicit", implicit_rank=8, prompt="p", oa_bin_id=1).to_dict(),
]  # fmt: skip
FIELDS = sorted(CONFIG_BASES[0])
mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(FIELDS), hostile),
    st.tuples(st.just("drop"), st.sampled_from(FIELDS), st.none()),
    st.tuples(st.just("add"), st.sampled_from(["ca_lora_rnak", "rank", "use_lora", "x"]), hostile),
)


@pytest.fixture(scope="module")
def small_unet():
    return tiny_unet_motion(seed=0)


@examples(ci=60)
@given(base=st.sampled_from(range(len(CONFIG_BASES))), change=mutation, via_file=st.booleans())
def test_adapter_config_mutations(small_unet, base, change, via_file):
    data = copy.deepcopy(CONFIG_BASES[base])
    op, key, value = change
    if op == "drop":
        del data[key]
    else:
        data[key] = value
    kind = "adapter config"
    OUTCOMES[kind]["tried"] += 1
    try:
        if via_file:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp, "adapter_config.json")
                path.write_text(json.dumps(data))
                config = MIVAAdapterConfig.from_json_file(path)
        else:
            config = MIVAAdapterConfig.from_dict(data)
    except Exception as error:
        clean_error(kind, error, key)
        return
    # Accepted: the config holds what was given (normalised spellings aside), round-trips, and builds an adapter.
    assert op != "add"
    if op == "set" and key != "ca_pe_mode":
        assert _same_value(getattr(config, key), value) or (isinstance(value, int) and getattr(config, key) == value)
    assert MIVAAdapterConfig.from_dict(json.loads(config.to_json_string())) == config
    add_miva_adapter(small_unet, "probe", config)
    discard_adapter(small_unet, "probe")
    OUTCOMES[kind]["correct result"] += 1


# ---------------------------------------------------------------------------------------------- YAML configs
EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples" / "configs"
YAML_BASES = {p.name: yaml.safe_load(p.read_text()) for p in sorted(EXAMPLES_DIR.glob("*.yaml"))}


def _paths(data, prefix=()):
    """Every key path of a nested mapping (sections and their keys)."""
    for key, value in data.items():
        yield (*prefix, key)
        if isinstance(value, dict):
            yield from _paths(value, (*prefix, key))


YAML_PATHS = sorted({(name, path) for name, data in YAML_BASES.items() for path in _paths(data)})
yaml_mutation = st.one_of(
    st.tuples(st.just("set"), st.sampled_from(YAML_PATHS), hostile),
    st.tuples(st.just("drop"), st.sampled_from(YAML_PATHS), st.none()),
    st.tuples(st.just("add"), st.sampled_from(YAML_PATHS), hostile),
)


@examples(ci=60)
@given(change=yaml_mutation)
def test_yaml_config_mutations(change):
    op, (name, path), value = change
    data = copy.deepcopy(YAML_BASES[name])
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    key = path[-1]
    if op == "set":
        parent[key] = value
    elif op == "drop":
        del parent[key]
    else:
        key = "unknwn_" + str(key)
        parent[key] = value
    kind = "YAML config"
    OUTCOMES[kind]["tried"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp, name)
        file.write_text(yaml.safe_dump(data))
        try:
            config = load_config(file)
            config.adapter_configs(tiny=True)
            config.pipeline_kwargs()
        except Exception as error:
            # The error starts with the key path (or names the key); a dropped key may be named by its partner.
            names = [".".join(map(str, path[:-1] + (key,))), str(key)]
            if op == "drop":
                names += ["required", "needs", "must"]
            clean_error(kind, error, *names)
            return
    assert op != "add"
    assert load_config(config.to_dict()) == config  # what was accepted round-trips
    OUTCOMES[kind]["correct result"] += 1


# ------------------------------------------------------------------------------------------- pipeline arguments
SIZE = 32


@pytest.fixture(scope="module")
def pipe():
    pipe = MIVAPipeline(**tiny_components(seed=0))
    pipe.set_progress_bar_config(disable=True)
    pipe.add_adapter("a", MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=2, motion_lora_rank=2))
    return pipe


ARGUMENTS = {
    "image": [make_test_image(SIZE, SIZE, seed=0), np.zeros((0, 0, 3), np.uint8), np.full((8, 8, 3), np.nan),
              torch.rand(3, 16, 24), torch.rand(2, 3, 8, 8), np.zeros((4, 4), np.uint8)],
    "prompt": ["clouds", ["a", "b"], [], [1], 123, None],
    "num_frames": [2, 3, 33, 10**9],
    "height": [16, 24, 20, 0, -8, 10**6],
    "width": [16, 40, 12],
    "num_inference_steps": [1, 3, 1001, 10**9],
    "guidance_scale": [1.0, 3.0, -2.0],
    "negative_prompt": ["ugly", ["x"], 5],
    "num_videos_per_prompt": [1, 2, -3],
    "eta": [0.0, 1.0, -1.0],
    "output_type": ["np", "pt", "latent", "pil", "gif"],
    "latents": [torch.zeros(1, 4, 3, 4, 4), torch.zeros(1, 4, 3, 2, 2), torch.zeros(2)],
    "decode_chunk_size": [1, 0, 2.5],
    "use_adain_norm": ["off", "on", "last", "sometimes"],
    "shared_noise_ratio": [0.0, 0.3, 1.0, 2.0],
    "first_frame_cond_type": ["lamp", "cinemo", "pia"],
    "use_dct_init": [True, False, 1],
    "dct_cutoff_ratio": [0.0, 0.5, 1.0, 3.0],
    "dct_cutoff_shape": ["rect", "tri", "circle"],
    "cil_ratio": [1.0, 0.5, 0.0],
    "cil_analytic": [True, False, "yes"],
    "batch_prompt": [["x"], ["x", "y"], [None], "x", [3]],
    "adapter_weights": [[0.5], [2.0], [0.0], [], [1.0, 1.0], 0.5, ["w"]],
    "word_to_replace": ["clouds", ["zzz"], 4],
    "ca_map_resolutions": ["all", ["low"], ["nowhere"], 5],
    "clip_skip": [1, -1, 2.0],
    "generator": [None, 3, [torch.Generator()], []],
}  # fmt: skip
ARGUMENT_NAMES = sorted(ARGUMENTS)


@st.composite
def call_changes(draw):
    name = draw(st.sampled_from(ARGUMENT_NAMES))
    value = draw(st.sampled_from(ARGUMENTS[name]) | st.sampled_from(HOSTILE))
    if name == "latents" and isinstance(value, torch.Tensor) and value.ndim == 5 and draw(st.booleans()):
        value = value.clone().fill_(math.nan) if draw(st.booleans()) else value
    return name, value


@examples(ci=30)
@given(change=call_changes())
def test_pipeline_argument_mutations(pipe, change):
    name, value = change
    kwargs = dict(
        image=make_test_image(SIZE, SIZE, seed=0),
        prompt="clouds",
        num_frames=3,
        height=SIZE,
        width=SIZE,
        num_inference_steps=1,
        guidance_scale=1.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    )
    kwargs[name] = value
    kind = "pipeline"
    OUTCOMES[kind]["tried"] += 1
    before = take_snapshot(pipe)
    try:
        frames = pipe(**kwargs).frames
    except Exception as error:
        assert_same_snapshot(before, take_snapshot(pipe))
        clean_error(kind, error, name, *(["image"] if name == "image" else []))
        return
    assert_same_snapshot(before, take_snapshot(pipe))
    # A correct result: finite frames of the requested kind and size.
    if kwargs["output_type"] == "pil":
        frames = np.stack([np.stack([np.asarray(f) for f in video]) for video in frames]).astype(np.float32)
    array = frames.numpy() if torch.is_tensor(frames) else np.asarray(frames)
    assert np.isfinite(array).all(), f"{name}={value!r} gave a non-finite video"
    if kwargs["output_type"] in ("np", "pil"):
        assert array.shape[1:] == (kwargs["num_frames"], kwargs["height"], kwargs["width"], 3)
    OUTCOMES[kind]["correct result"] += 1


# --------------------------------------------------------------------------------------------- adapter files
@pytest.fixture(scope="module")
def saved_adapter(tmp_path_factory):
    """A pipeline with a random adapter "a" (active) and a saved random adapter "b" to damage."""
    pipe = MIVAPipeline(**tiny_components(seed=0))
    config = MIVAAdapterConfig(use_ca_lora=True, ca_lora_rank=2, motion_lora_rank=2, use_motion_embed=True)
    g = torch.Generator().manual_seed(0)
    for name in ("a", "b"):
        pipe.add_adapter(name, config)
        with torch.no_grad():
            for tensor in adapter_state_dict(pipe.unet, name).values():
                tensor.copy_(torch.randn(tensor.shape, generator=g))
    folder = tmp_path_factory.mktemp("adapter") / "b"
    pipe.save_adapter("b", folder)
    saved = {k: v.clone() for k, v in adapter_state_dict(pipe.unet, "b").items()}
    pipe.delete_adapters("b")
    pipe.set_adapters(["a"])
    return pipe, folder, saved, config


@st.composite
def file_damage(draw):
    target = draw(st.sampled_from(["miva_adapter.safetensors", "adapter_config.json"]))
    op = draw(st.sampled_from(["truncate", "flip", "flips"]))
    fraction = draw(st.floats(0, 1, exclude_max=True))
    bits = draw(st.lists(st.integers(0, 7), min_size=1, max_size=4))
    extra = draw(st.lists(st.floats(0, 1, exclude_max=True), min_size=3, max_size=3))
    return target, op, fraction, bits, extra


@examples(ci=40)
@given(damage=file_damage())
def test_damaged_adapter_files(saved_adapter, damage):
    pipe, folder, saved, config = saved_adapter
    target, op, fraction, bits, extra = damage
    kind = f"adapter file ({target})"
    OUTCOMES[kind]["tried"] += 1
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = Path(tmp) / "b"
        shutil.copytree(folder, copy_dir)
        path = copy_dir / target
        data = bytearray(path.read_bytes())
        if op == "truncate":
            data = data[: int(fraction * len(data))]
        else:
            positions = [fraction] + (extra if op == "flips" else [])
            for position, bit in zip(positions, bits * 4):
                data[int(position * len(data))] ^= 1 << bit
        path.write_bytes(bytes(data))
        before = take_snapshot(pipe)
        try:
            pipe.load_adapters(copy_dir, adapter_names="m")
        except Exception as error:
            assert_same_snapshot(before, take_snapshot(pipe))  # "a" and everything else bit-identical
            clean_error(kind, error, target, str(copy_dir))
            return
    # Loaded: the tensors are exactly the saved ones (a damaged weights file never loads as different numbers);
    # a damaged but still valid adapter_config.json is loaded as it now reads (with a warning).
    loaded = adapter_state_dict(pipe.unet, "m")
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    from miva.attention_processors import get_miva_context

    if get_miva_context(pipe.unet).configs["m"] == config:
        OUTCOMES[kind]["correct result"] += 1  # the damage hit nothing that matters (e.g. the version string)
    else:
        assert target == "adapter_config.json", "a damaged weights file loaded with another config"
        OUTCOMES[kind]["loaded the edited config (warned)"] += 1
    pipe.delete_adapters("m")
    pipe.set_adapters(["a"])
