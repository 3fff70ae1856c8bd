"""`MIVAAdapterConfig`: what one MIVA adapter is made of (serialised as `adapter_config.json`).

Field names follow the seed's config keys wherever the seed has one (docs/research.md#config-names), so a research config maps
onto this dataclass key by key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from ..guards import MAX_RANK, did_you_mean, read_json_object
from .parts import CROSS, has_part_at
from .positional import PE_MODES, PE_STYLES, normalize_pe_mode

SA_MODES = ("first", "prev", "first_prev")
CA_MODES = ("lora", "implicit")
Q_DOWNSAMPLE_MODES = ("nearest", "avg")
CA_PE_MODES = PE_MODES  # the registry's modes (`positional.PE_REGISTRY`), under the config field's name
# `None`, "null", "none" mean no positional encoding; anything else must be a registered mode.
normalize_ca_pe_mode = normalize_pe_mode


def _check_choice(name: str, value: Any, valid: tuple) -> None:
    if value not in valid:
        hint = did_you_mean(value, valid) if isinstance(value, str) else ""
        raise ValueError(f"{name}={value!r} is not one of {list(valid)}{hint}")


def _check_positive(name: str, value: Any, kind: type = int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive {kind.__name__}")
    if kind is float and not math.isfinite(value):  # NaN passes `<= 0`; either poisons every frame
        raise ValueError(f"{name}={value!r} must be a finite positive number")
    if kind is int and name.endswith("rank") and value > MAX_RANK:
        raise ValueError(f"{name}={value!r} is absurdly large: ranks are at most {MAX_RANK} (attention widths are "
                         "at most 1280 in SD1.5)")


def parse_first_frame_scale(value: float | str) -> tuple[str, float]:
    """Split `sa_first_frame_scale` into `(kind, number)`.

    `0.5` -> `("float", 0.5)`; `"linear"` -> `("linear", 0.0)` (s = t / 1000); `"adaptive_0.2"` -> `("adaptive", 0.2)`
    (s = softmax(Linear(SiLU(temb)) / T)[0] with temperature T). `"adaptive_T"` alone means T = 1.
    """
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"sa_first_frame_scale={value!r} must lie in [0, 1]")
        return "float", float(value)
    if value == "linear":
        return "linear", 0.0
    if isinstance(value, str) and value.startswith("adaptive"):
        suffix = value[len("adaptive") :].lstrip("_")
        if suffix in ("", "T"):
            return "adaptive", 1.0
        try:
            temperature = float(suffix)
        except ValueError:
            temperature = -1.0
        if temperature > 0 and math.isfinite(temperature):
            return "adaptive", temperature
    raise ValueError(
        f"sa_first_frame_scale={value!r} is not valid: use a float in [0, 1], 'linear', or 'adaptive_<T>' "
        "with a positive temperature T (e.g. 'adaptive_0.2')"
    )


@dataclass
class MIVAAdapterConfig:
    """Which components a MIVA adapter has and how they are shaped.

    An adapter may hold up to four parts, each optional: the cross-frame (I2V) branch at spatial self-attention, the
    MotionLoRA (+ motion embedding) at the motion modules, and CA-LoRA or an implicit prompt (+ spatiotemporal Q) at
    spatial cross-attention.
    """

    # Cross-frame / I2V branch at spatial self-attention (attn1).
    use_i2v: bool = field(default=True, metadata={"help": "Add the cross-frame (I2V) branch at spatial attn1."})
    i2v_train_q: bool = field(default=False, metadata={"help": "Give the branch its own trainable W_Q copy."})
    sa_mode: str = field(default="first", metadata={"help": f"Keys/values of the branch: one of {SA_MODES}."})
    sa_first_frame_scale: float | str = field(
        default=0.5, metadata={"help": "first_prev weight s of frame 0: float, 'linear' or 'adaptive_<T>'."}
    )
    # MotionLoRA at the motion modules' temporal attention.
    use_motion_lora: bool = field(default=True, metadata={"help": "LoRA on Q/K/V/O of temporal attention."})
    motion_lora_rank: int = field(default=32, metadata={"help": "Rank of the MotionLoRA deltas."})
    motion_lora_scale: float | None = field(default=1.0, metadata={"help": "network_alpha; factor alpha / rank."})
    use_motion_embed: bool = field(default=False, metadata={"help": "Learned (frames, channels) motion embedding."})
    # Cross-attention (attn2).
    use_ca_lora: bool = field(default=False, metadata={"help": "LoRA on K/V/O (and Q) of cross-attention."})
    ca_mode: str = field(default="lora", metadata={"help": f"Cross-attention adapter kind: one of {CA_MODES}."})
    ca_lora_rank: int = field(default=32, metadata={"help": "Rank of the CA-LoRA deltas."})
    ca_lora_scale: float | None = field(default=1.0, metadata={"help": "network_alpha of CA-LoRA."})
    use_q_lora: bool = field(default=False, metadata={"help": "Also put a CA-LoRA delta on W_Q."})
    ca_out_lora_bias: bool = field(
        default=False, metadata={"help": "Constant (out,) bias on the CA out delta (research import of y + dO(y))."}
    )
    implicit_rank: int = field(default=64, metadata={"help": "Rank of the implicit prompt (ca_mode='implicit')."})
    q_downsample: bool = field(default=False, metadata={"help": "Spatiotemporal Q in cross-attention."})
    q_downsample_ratio: int = field(default=4, metadata={"help": "Spatial stride r of the spatiotemporal Q."})
    q_downsample_mode: str = field(default="nearest", metadata={"help": f"One of {Q_DOWNSAMPLE_MODES}."})
    ca_pe_mode: str | None = field(default=None, metadata={"help": f"Positional encoding of Q: None or {CA_PE_MODES}."})
    pe_style: str = field(default="standard", metadata={"help": f"One of {PE_STYLES}; 'research' keeps its quirks."})
    # Mask branch (M-MIVA, docs/mask_branch.md): a second latent stream predicting the adapter's region mask video.
    use_mask_branch: bool = field(
        default=False, metadata={"help": "Mask-stream Q/O projections at attn1 (needs use_i2v); see docs/mask_branch.md."}
    )
    # Orthogonal adapters, learned word, prompt and provenance.
    oa_bin_id: int | None = field(default=None, metadata={"help": "Orthogonal-adapter bases bin (None: off)."})
    word_to_learn: str | None = field(default=None, metadata={"help": "New token whose embedding ships along."})
    prompt: str | None = field(default=None, metadata={"help": "The adapter's own prompt (per-adapter prompts)."})
    base_model: str | None = field(default=None, metadata={"help": "Hub id or path of the SD1.5 base."})
    motion_adapter: str | None = field(default=None, metadata={"help": "Hub id or path of the motion adapter."})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` naming the field, the value and what would be valid."""
        for name in ("use_i2v", "i2v_train_q", "use_motion_lora", "use_motion_embed", "use_ca_lora", "use_q_lora",
                     "ca_out_lora_bias", "q_downsample", "use_mask_branch"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be true or false")
        if self.use_mask_branch and not self.use_i2v:
            raise ValueError("use_mask_branch=True needs use_i2v=True: the mask stream's projections live beside the "
                             "cross-frame branch at spatial self-attention (docs/mask_branch.md)")
        _check_choice("sa_mode", self.sa_mode, SA_MODES)
        parse_first_frame_scale(self.sa_first_frame_scale)
        _check_choice("ca_mode", self.ca_mode, CA_MODES)
        _check_choice("q_downsample_mode", self.q_downsample_mode, Q_DOWNSAMPLE_MODES)
        _check_choice("pe_style", self.pe_style, PE_STYLES)
        self.ca_pe_mode = normalize_ca_pe_mode(self.ca_pe_mode)
        for name in ("motion_lora_rank", "ca_lora_rank", "implicit_rank", "q_downsample_ratio"):
            _check_positive(name, getattr(self, name))
        if self.q_downsample_ratio > 64:
            raise ValueError(f"q_downsample_ratio={self.q_downsample_ratio!r} must be at most 64 (the spatial stride "
                             "of the spatiotemporal Q; the research default is 4)")
        for name in ("word_to_learn", "prompt", "base_model", "motion_adapter"):
            if getattr(self, name) is not None and not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}={getattr(self, name)!r} must be a string or null, got "
                                 f"{type(getattr(self, name)).__name__}")
        for name in ("motion_lora_scale", "ca_lora_scale"):
            if getattr(self, name) is not None:
                _check_positive(name, getattr(self, name), float)
        if self.oa_bin_id is not None and (isinstance(self.oa_bin_id, bool) or not isinstance(self.oa_bin_id, int)
                                           or self.oa_bin_id < 0):
            raise ValueError(f"oa_bin_id={self.oa_bin_id!r} must be a non-negative int or None")

    # Derived facts the processors ask for.
    @property
    def has_cross_attention_part(self) -> bool:
        """Whether a part of this adapter sits at spatial cross-attention (`parts.ADAPTER_PARTS`)."""
        return has_part_at(self, CROSS)

    @property
    def first_frame_scale_kind(self) -> str:
        """`"float"`, `"linear"` or `"adaptive"`: the kind of `sa_first_frame_scale` (`parse_first_frame_scale`)."""
        return parse_first_frame_scale(self.sa_first_frame_scale)[0]

    @property
    def spatiotemporal_key(self) -> tuple:
        """What adapters active together must agree on (they share one query layout)."""
        if not self.q_downsample:
            return (False,)
        return (True, self.q_downsample_ratio, self.q_downsample_mode, self.ca_pe_mode, self.pe_style)

    # Serialisation (PEFT style: adapter_config.json).
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MIVAAdapterConfig:
        if not isinstance(data, dict):
            raise TypeError(f"a MIVAAdapterConfig is read from a dict of its fields, got {type(data).__name__} "
                            f"{data!r:.60}")
        data = {k: v for k, v in data.items() if k not in ("miva_version", "_class_name")}
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = [k for k in data if k not in valid]
        if unknown:
            key = unknown[0]
            raise ValueError(f"unknown MIVAAdapterConfig field {key!r}{did_you_mean(key, valid)}")
        return cls(**data)

    def to_json_string(self) -> str:
        from miva import __version__

        return json.dumps({**self.to_dict(), "miva_version": __version__}, indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | os.PathLike) -> str:
        from ..atomic import atomic_write_text

        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "adapter_config.json")
        atomic_write_text(path, self.to_json_string())
        return path

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> MIVAAdapterConfig:
        data = read_json_object(path, "adapter_config.json")
        try:
            return cls.from_dict(data)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{os.fspath(path)}: {e}") from None
