"""What a MIVA adapter is made of, declared once (PEFT's `adapter_layer_names` idea).

Each `AdapterPart` says which `MIVAAdapterConfig` field switches it on, which processor kind carries it, which
attributes of that processor's adapter module hold its parameters, whether `fuse_adapters` can merge it (and into
which base tensor), its model-card tag and line. Everything else derives from `ADAPTER_PARTS`:

- `TRAINABLE_PARTS` and `adapter_parts(config)` (the trainer's `trainable_modules` and their default);
- `part_of(kind, parameter)` (which part a parameter trains with);
- `has_part_at(config, kind)` (whether a processor builds an adapter module; `config.has_cross_attention_part`);
- `FUSE_TARGETS` (what `fusing.py` merges and the orthogonal bases cover);
- `component_tags(config)` / `component_lines(config)` (the model card).

To add a part: one `AdapterPart` below, the module attribute in its processor's adapter module, and its tests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: adapter_config imports this module
    from .adapter_config import MIVAAdapterConfig

__all__ = [
    "ADAPTER_PARTS",
    "ADAPTIVE_WEIGHT_PART",
    "CA_LORA_PART",
    "I2V_PART",
    "IMPLICIT_PART",
    "MASK_BRANCH_PART",
    "MOTION_EMBED_PART",
    "MOTION_LORA_PART",
    "STQ_PART",
    "CROSS",
    "FUSE_TARGETS",
    "LORA_DELTAS",
    "SELF",
    "TEMPORAL",
    "TRAINABLE_PARTS",
    "AdapterPart",
    "adapter_parts",
    "check_same_query_layout",
    "component_lines",
    "component_tags",
    "has_part_at",
    "part_of",
]

# Processor kinds (`part_kind` of the three processors and their adapter modules).
SELF, CROSS, TEMPORAL = "self_attention", "cross_attention", "temporal_attention"

# The four LoRA deltas of an attention and the projection of the diffusers `Attention` each one belongs to.
LORA_DELTAS: dict[str, str] = {"to_q_lora": "to_q", "to_k_lora": "to_k", "to_v_lora": "to_v", "to_out_lora": "to_out"}
_LORA_FUSE = {delta: (projection, "weight") for delta, projection in LORA_DELTAS.items()}


@dataclass(frozen=True)
class AdapterPart:
    """One part of a MIVA adapter.

    - `name`: the part's name in `trainable_modules` (e.g. `"motion_lora"`);
    - `flag`: the `MIVAAdapterConfig` field that switches it on; `enabled(config)` the full condition;
    - `kind`: the processor kind that carries it (`SELF`, `CROSS`, `TEMPORAL`);
    - `attributes`: the attributes of that processor's adapter module holding its parameters (first component of
      the parameter name); empty for a part without parameters (spatiotemporal Q);
    - `fuse_into`: attribute -> `(projection, "weight" | "bias")` merged by `fuse_adapters`; empty: not fusable;
    - `tag` / `line`: its model-card tag and "Contents" line (None: none).
    """

    name: str
    flag: str
    kind: str
    enabled: Callable[[MIVAAdapterConfig], bool]
    attributes: tuple[str, ...] = ()
    fuse_into: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    tag: Callable[[MIVAAdapterConfig], str] | None = None
    line: Callable[[MIVAAdapterConfig], str] | None = None

    @property
    def trainable(self) -> bool:
        return bool(self.attributes)


def _adaptive_first_prev(config: MIVAAdapterConfig) -> bool:
    return config.use_i2v and config.sa_mode == "first_prev" and config.first_frame_scale_kind == "adaptive"


ADAPTER_PARTS: tuple[AdapterPart, ...] = (
    AdapterPart(
        "i2v", "use_i2v", SELF, lambda c: c.use_i2v, ("to_q", "to_out"),  # to_q: only with i2v_train_q
        tag=lambda c: f"cross-frame-{c.sa_mode}",
        line=lambda c: (f"- cross-frame (I2V) branch at spatial self-attention: `sa_mode={c.sa_mode!r}`, "
                        f"`sa_first_frame_scale={c.sa_first_frame_scale!r}`, own W_Q: {c.i2v_train_q}"),
    ),
    # The first-frame weight module of `sa_first_frame_scale="adaptive_<T>"` (it only acts in `first_prev`).
    AdapterPart("adaptive_weight", "sa_first_frame_scale", SELF, _adaptive_first_prev, ("weight_module",)),
    AdapterPart(
        "motion_lora", "use_motion_lora", TEMPORAL, lambda c: c.use_motion_lora, tuple(LORA_DELTAS), _LORA_FUSE,
        tag=lambda c: "motion-lora",
        line=lambda c: f"- MotionLoRA at temporal attention: rank {c.motion_lora_rank}, alpha {c.motion_lora_scale}",
    ),
    AdapterPart(
        "motion_embed", "use_motion_embed", TEMPORAL, lambda c: c.use_motion_embed, ("motion_embed",),
        tag=lambda c: "motion-embedding",
        line=lambda c: "- motion embedding (one `(frames, channels)` table per temporal attention)",
    ),
    AdapterPart(
        "ca_lora", "use_ca_lora", CROSS, lambda c: c.use_ca_lora and c.ca_mode != "implicit",
        (*LORA_DELTAS, "to_out_bias"), {**_LORA_FUSE, "to_out_bias": ("to_out", "bias")},
        tag=lambda c: "ca-lora",
        line=lambda c: (f"- CA-LoRA at cross-attention: rank {c.ca_lora_rank}, alpha {c.ca_lora_scale}, "
                        f"Q-LoRA: {c.use_q_lora}"),
    ),
    AdapterPart(
        "implicit", "ca_mode", CROSS, lambda c: c.ca_mode == "implicit", ("implicit_prompt",),
        tag=lambda c: "implicit-prompt",
        line=lambda c: f"- implicit prompt at cross-attention: rank {c.implicit_rank}",
    ),
    AdapterPart(
        "spatiotemporal_query", "q_downsample", CROSS, lambda c: c.q_downsample,
        tag=lambda c: "spatiotemporal-query",
        line=lambda c: (f"- spatiotemporal query: ratio {c.q_downsample_ratio} ({c.q_downsample_mode}), "
                        f"`ca_pe_mode={c.ca_pe_mode!r}`, `pe_style={c.pe_style!r}`"),
    ),
    # The mask stream's own W_Q / W_O at spatial attn1, copies of the frozen ones (docs/mask_branch.md).
    AdapterPart(
        "mask_branch", "use_mask_branch", SELF, lambda c: c.use_mask_branch, ("mask_to_q", "mask_to_out"),
        tag=lambda c: "mask-branch",
        line=lambda c: ("- mask branch (M-MIVA): predicts its region's mask video from the frame-0 mask in a second "
                        "latent stream and restricts the adapter to that region (docs/mask_branch.md)"),
    ),
)

(I2V_PART, ADAPTIVE_WEIGHT_PART, MOTION_LORA_PART, MOTION_EMBED_PART, CA_LORA_PART, IMPLICIT_PART, STQ_PART,
 MASK_BRANCH_PART) = ADAPTER_PARTS
TRAINABLE_PARTS: tuple[str, ...] = tuple(part.name for part in ADAPTER_PARTS if part.trainable)
# Adapter attribute -> (projection, tensor) for every fusable part (`fusing.py`).
FUSE_TARGETS: dict[str, tuple[str, str]] = {k: v for part in ADAPTER_PARTS for k, v in part.fuse_into.items()}


def adapter_parts(config: MIVAAdapterConfig) -> list[str]:
    """The trainable parts `config` has, in `TRAINABLE_PARTS` order (the default `trainable_modules`)."""
    return [part.name for part in ADAPTER_PARTS if part.trainable and part.enabled(config)]


def has_part_at(config: MIVAAdapterConfig, kind: str) -> bool:
    """Whether `config` has a part carried by processors of `kind` (so they build an adapter module)."""
    return any(part.kind == kind and part.enabled(config) for part in ADAPTER_PARTS)


def part_of(kind: str, parameter: str) -> str:
    """The part that the parameter `parameter` (a name inside an adapter module of processor kind `kind`) belongs
    to, e.g. `part_of(TEMPORAL, "to_q_lora.down.weight") == "motion_lora"`."""
    attribute = parameter.split(".", 1)[0]
    for part in ADAPTER_PARTS:
        if part.kind == kind and attribute in part.attributes:
            return part.name
    raise ValueError(f"parameter {parameter!r} of a {kind} adapter module belongs to no declared adapter part")


def component_tags(config: MIVAAdapterConfig) -> list[str]:
    """Model-card tags naming what the adapter contains."""
    return [part.tag(config) for part in ADAPTER_PARTS if part.tag is not None and part.enabled(config)]


def component_lines(config: MIVAAdapterConfig) -> list[str]:
    """Model-card lines describing the adapter's parts."""
    return [part.line(config) for part in ADAPTER_PARTS if part.line is not None and part.enabled(config)]


def check_same_query_layout(keys: Mapping[str, tuple]) -> None:
    """The one rule for adapters used together: they share one query layout, so their `spatiotemporal_key`s (name ->
    key; only adapters with a cross-attention part) must be equal. `ValueError` listing the names per layout."""
    layouts: dict[tuple, list[str]] = {}
    for name, key in keys.items():
        layouts.setdefault(key, []).append(name)
    if len(layouts) > 1:
        detail = "; ".join(f"{names}: {key}" for key, names in layouts.items())
        raise ValueError(
            f"adapters {list(keys)} disagree on spatiotemporal Q / positional encoding; adapters used together must "
            f"agree on spatiotemporal Q and its positional encoding (q_downsample, q_downsample_ratio, "
            f"q_downsample_mode, ca_pe_mode, pe_style): {detail}"
        )
