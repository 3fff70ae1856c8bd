"""The few-shot benchmark's rows (`benchmarks/motion_world/fewshot.py`): the adapter recipes (variants) and the rows
of each MotionWorld base. Data only; `fewshot.py` trains, evaluates and caches them."""

from __future__ import annotations

from dataclasses import dataclass, field

from miva.world.adapters import RECIPE_CLIPS, RECIPES
from miva.world.evaluate import REFERENCES

# Adapter variants: overrides of the research recipe (cross-frame "first" + MotionLoRA + CA-LoRA).
VARIANTS = {
    "full": {},
    "ca_only": {"use_i2v": False, "use_motion_lora": False, "use_ca_lora": True},
    "motion_only": {"use_i2v": False, "use_motion_lora": True, "use_ca_lora": False},
    "cf_only": {"use_i2v": True, "use_motion_lora": False, "use_ca_lora": False},
    "implicit": {"ca_mode": "implicit", "implicit_rank": 16},
    "sa_prev": {"sa_mode": "prev"},
    "sa_first_prev_adaptive": {"sa_mode": "first_prev", "sa_first_frame_scale": "adaptive_1.0"},
    "q_lora": {"use_q_lora": True},
    **{
        f"stq_r{r}_{pe or 'none'}": {"q_downsample": True, "q_downsample_ratio": r, "ca_pe_mode": pe}
        for r in (1, 2, 4)
        for pe in (None, "rope_3d", "temporal")
    },
}
# The Wan recipe's (miva.world.adapters.WAN_PARTS: cross-frame "first_prev" + implicit prompt + MotionLoRA) ablations;
# ca_mode "lora" without CA-LoRA is the text cross-attention unchanged (the official "vanilla").
WAN_VARIANTS = {
    "full": {},
    "sa_first": {"sa_mode": "first"},
    "no_implicit": {"ca_mode": "lora"},
    "no_motion_lora": {"use_motion_lora": False},
}
BASE_VARIANTS = {"unet": VARIANTS, "wan": WAN_VARIANTS}


@dataclass(frozen=True)
class AdapterSpec:
    motion: str
    clips: int = RECIPE_CLIPS
    variant: str = "full"
    oa_bin: int | None = None
    seed: int = 0  # the training seed (noise, timesteps, clip order); the clips themselves stay the same
    steps: int | None = None  # training steps; None: the run's --steps
    base: str = "unet"  # the MotionWorld base it is trained on (its cache lives under that base's fingerprint)

    def key(self, steps: int) -> str:
        """The cache folder name of this recipe trained for ``steps`` (defaults leave no mark, so that adapters
        cached before a field existed keep their names)."""
        oa = f"-oa{self.oa_bin}" if self.oa_bin is not None else ""
        seed = f"-seed{self.seed}" if self.seed else ""
        budget = f"-{steps}steps" if steps != RECIPES[self.base]["steps"] else ""
        return f"{self.motion.replace('+', '_')}-{self.clips}c-{self.variant}{oa}{seed}{budget}"


@dataclass(frozen=True)
class Row:
    id: str
    target: str  # motion the videos are scored against
    adapters: tuple[AdapterSpec, ...] = ()
    weights: tuple[float, ...] | None = None
    mode: str = "residual"
    fuse: bool = False
    per_adapter_prompts: bool = False
    target_scale: float = 1.0  # the target's expected strength (e.g. 0.5 + 0.5 of two motions)
    sampling: tuple[tuple[str, object], ...] = ()  # extra `pipe(...)` arguments, e.g. the research latent init
    reference: str | None = None  # score a `miva.world.evaluate.REFERENCES` video instead of sampling
    notes: str = field(default="", compare=False)


def _rows() -> list[Row]:
    right, down = AdapterSpec("right"), AdapterSpec("down")
    rows = []
    for motion in ("right", "zoom_in", "rotate_cw"):
        # The scale of every score: the ground truth through the base's autoencoder (the best possible) and frame 0
        # repeated (no motion).
        rows += [Row(f"reference/{motion}/{kind}", motion, reference=kind) for kind in REFERENCES]
        rows.append(Row(f"fewshot/{motion}/base", motion))
        rows.append(Row(f"fewshot/{motion}/10clips", motion, (AdapterSpec(motion),)))
    rows += [Row(f"clips/right/{n}", "right", (AdapterSpec("right", clips=n),)) for n in (1, 3, 30)]
    # The same recipe with other training seeds: how far two trainings differ (the noise floor of every row).
    rows += [Row(f"seeds/right/10clips_seed{s}", "right", (AdapterSpec("right", seed=s),)) for s in (1, 2)]
    # The best ablation (cross-frame "prev") with the same seeds: is its lead over "first" more than that noise?
    rows += [
        Row(f"seeds/right/sa_prev_seed{s}", "right", (AdapterSpec("right", variant="sa_prev", seed=s),))
        for s in (1, 2)
    ]
    rows += [Row(f"budget/right/{n}steps", "right", (AdapterSpec("right", steps=n),)) for n in (300, 1200)]
    rows.append(Row("budget/right/1200steps_seed1", "right", (AdapterSpec("right", steps=1200, seed=1),)))
    rows.append(Row("budget/zoom_in/1200steps", "zoom_in", (AdapterSpec("zoom_in", steps=1200),)))
    # The one ablation past the noise (spatiotemporal Q with 3D RoPE), with other seeds and the larger budget.
    stq = "stq_r2_rope_3d"
    rows += [Row(f"seeds/right/{stq}_seed{s}", "right", (AdapterSpec("right", variant=stq, seed=s),)) for s in (1, 2)]
    rows += [
        Row(f"budget/right/{stq}_{n}steps{f'_seed{s}' if s else ''}", "right",
            (AdapterSpec("right", variant=stq, seed=s, steps=n),))
        for n, s in ((1200, 0), (1200, 1), (2400, 0))
    ]
    both = (right, down)
    rows += [
        Row("compose/right+down/residual_0.5", "right+down", both, (0.5, 0.5), target_scale=0.5),
        Row("compose/right+down/weights_1", "right+down", both, (1.0, 1.0), mode="weights"),
        Row("compose/right+down/fused_1", "right+down", both, (1.0, 1.0), mode="weights", fuse=True),
        Row("compose/right+down/prompts_0.5", "right+down", both, (0.5, 0.5), per_adapter_prompts=True,
            target_scale=0.5),
    ]
    rows += [Row(f"sweep/right/{w}", "right", (right,), (w,), target_scale=w) for w in (0.0, 0.25, 0.5, 1.0, 1.5)]
    ortho = (AdapterSpec("right", oa_bin=0), AdapterSpec("down", oa_bin=1))
    rows += [
        Row("orthogonal/right+down/residual_0.5", "right+down", ortho, (0.5, 0.5), target_scale=0.5),
        Row("orthogonal/right+down/weights_1", "right+down", ortho, (1.0, 1.0), mode="weights"),
    ]
    rows += [Row(f"ablation/right/{v}", "right", (AdapterSpec("right", variant=v),)) for v in VARIANTS if v != "full"]
    # Every row samples with the world's default (SAMPLING: the research latent init and AdaIN "last"); these
    # take one of the two away: the plain init ("lamp"), or no AdaIN.
    lamp = (("first_frame_cond_type", "lamp"), ("use_dct_init", False))
    no_adain = (("use_adain_norm", "off"),)
    rows += [
        Row("sampling/right/base_lamp", "right", sampling=lamp),
        Row("sampling/right/10clips_lamp", "right", (right,), sampling=lamp),
        Row("sampling/right/base_no_adain", "right", sampling=no_adain),
        Row("sampling/right/10clips_no_adain", "right", (right,), sampling=no_adain),
    ]
    return rows


def _wan_rows() -> list[Row]:
    """The rows that apply to the Wan DiT (the module docstring says which are left out), ids as on the UNet."""
    def spec(motion="right", **fields):
        return AdapterSpec(motion, base="wan", **fields)

    right, both = spec(), (spec(), spec("down"))
    rows = []
    for motion in ("right", "zoom_in", "rotate_cw"):
        rows += [Row(f"reference/{motion}/{kind}", motion, reference=kind) for kind in REFERENCES]
        rows.append(Row(f"fewshot/{motion}/base", motion))
        rows.append(Row(f"fewshot/{motion}/10clips", motion, (spec(motion),)))
    rows += [Row(f"clips/right/{n}", "right", (spec(clips=n),)) for n in (1, 3)]
    rows += [Row(f"sweep/right/{w}", "right", (right,), (w,), target_scale=w) for w in (0.0, 0.5, 1.0, 1.5)]
    rows += [
        Row("compose/right+down/residual_0.5", "right+down", both, (0.5, 0.5), target_scale=0.5),
        Row("compose/right+down/weights_1", "right+down", both, (1.0, 1.0), mode="weights"),
    ]
    rows += [Row(f"ablation/right/{v}", "right", (spec(variant=v),)) for v in WAN_VARIANTS if v != "full"]
    return rows


ROWS = _rows()
WAN_ROWS = _wan_rows()
BASE_ROWS = {"unet": ROWS, "wan": WAN_ROWS}
