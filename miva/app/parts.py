"""The adapter parts the Train form offers, and the `MIVAAdapterConfig` they switch on over a base's recipe."""

from __future__ import annotations

from .registry import AppInputError

# The adapter parts the form offers -> the MIVAAdapterConfig switches that add them (all others off).
PART_SWITCHES = {
    "i2v": {"use_i2v": True},
    "motion_lora": {"use_motion_lora": True},
    "ca_lora": {"use_ca_lora": True},
    "implicit": {"ca_mode": "implicit"},
    "motion_embed": {"use_motion_embed": True},
}
ALL_OFF = {"use_i2v": False, "use_motion_lora": False, "use_ca_lora": False, "use_motion_embed": False}


def parts_of(adapter: dict) -> list[str]:
    """The form's parts that an adapter settings dict (`MIVAAdapterConfig` fields) switches on, in form order."""
    return [part for part, switches in PART_SWITCHES.items() if all(adapter.get(k) == v for k, v in switches.items())]


def adapter_config_for(parts: list[str], recipe: dict | None = None, rank: int | None = None):
    """The `MIVAAdapterConfig` with exactly `parts` (names from `PART_SWITCHES`) over the base's recipe settings
    `recipe` (ranks, branch modes, ...; its own part switches are replaced by `parts`); `rank` sets both LoRA ranks
    when the recipe does not (a recipe derives its ranks and scales from the rank itself)."""
    from ..attention_processors import MIVAAdapterConfig

    if not parts:
        raise AppInputError(f"Adapter parts: pick at least one of {list(PART_SWITCHES)}")
    unknown = [p for p in parts if p not in PART_SWITCHES]
    if unknown:
        raise AppInputError(f"Adapter parts: {unknown[0]!r} is not one of {list(PART_SWITCHES)}")
    settings = {k: v for k, v in (recipe or {}).items() if k not in ALL_OFF and k != "ca_mode"}
    if rank is not None and not recipe:
        settings.update(motion_lora_rank=int(rank), ca_lora_rank=int(rank))
    settings.update(ALL_OFF)
    for part in parts:
        settings.update(PART_SWITCHES[part])
    return MIVAAdapterConfig(**settings)
