"""The sections of the research config layout (`miva.config`): `unet_additional_kwargs` (with
`motion_module_kwargs`), `train_data`, `validation_data` and the checks of `noise_scheduler_kwargs`.

Each field's metadata says what the key means (`help`) and which target field it sets (`feeds`, read by
`miva.config.fields.fed_values`); keys that set a `TrainConfig` field are declared by `research_key` (the key map of
`miva.config.training`); `docs/config.md` is the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..attention_processors.adapter_config import (
    CA_PE_MODES,
    PE_STYLES,
    Q_DOWNSAMPLE_MODES,
    SA_MODES,
    normalize_ca_pe_mode,
    parse_first_frame_scale,
)
from ..attention_processors.composition import DEFAULT_PARALLEL_MODE, PARALLEL_MODES
from ..guards import MAX_RANK
from ..pipelines.latent_init import ADAIN_MODES, DCT_CUTOFF_SHAPES, FIRST_FRAME_COND_TYPES
from .fields import (
    ConfigError,
    boolean,
    choice,
    fixed,
    integer,
    key,
    list_of,
    mapping,
    multiple_of_8,
    number,
    one_or_list,
    optional,
    path_value,
    section,
    string,
)
from .fields import suggest as _suggest
from .mask_keys import mask_attention_mode
from .regions import check_schedule_lengths, image_mask_map, mask_map, schedule_map
from .training import research_key

ADAPTER_PATH_KEYS = ("adapter_i2v_path", "adapter_lora_path", "ca_lora_path")
DDIM_KWARGS = (
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "beta_schedule",
    "trained_betas",
    "clip_sample",
    "set_alpha_to_one",
    "steps_offset",
    "prediction_type",
    "thresholding",
    "dynamic_thresholding_ratio",
    "clip_sample_range",
    "sample_max_value",
    "timestep_spacing",
    "rescale_betas_zero_snr",
)
DDPM_ONLY_KWARGS = ("variance_type",)
CA_MAP_LEVELS = ("low", "middle", "high")
OUTPUT_FORMATS = ("gif", "mp4", "png", "images", "eval")
_STRUCTURE = "miva builds the stock diffusers UNetMotionModel from the motion adapter checkpoint (motion_module_path)"


def _ca_pe_mode(path: str, value: Any) -> str | None:
    try:
        return normalize_ca_pe_mode(value)
    except ValueError:
        valid = ["null", *CA_PE_MODES]
        raise ConfigError(f"{path}: {value!r} is not one of {valid}{_suggest(value, valid)}") from None


def _first_frame_scale(path: str, value: Any):
    try:
        parse_first_frame_scale(value)
    except ValueError as e:
        raise ConfigError(f"{path}: {str(e).split(' ', 1)[1]}") from None
    return value


def _image_selection(path: str, value: Any):
    """`prompt_path`: a list of image names, one name, "all" (every image in image_path) or "newlamp" (1..20.png)."""
    if value is None or value in ("all", "newlamp"):
        return value
    return one_or_list(string)(path, value) if isinstance(value, list) else [string(path, value)]


def _ca_maps(path: str, value: Any):
    if value is None or value == "all":
        return value
    levels = [value] if isinstance(value, str) else value
    return list_of(choice(CA_MAP_LEVELS), 1)(path, levels)


def check_scheduler_kwargs(path: str, value: Any) -> dict:
    data = mapping(path, value)
    for name, item in data.items():
        if name not in DDIM_KWARGS + DDPM_ONLY_KWARGS:
            raise ConfigError(f"{path}.{name}: unknown key{_suggest(name, DDIM_KWARGS)}")
        if name == "beta_schedule":
            choice(("linear", "scaled_linear", "squaredcos_cap_v2"))(f"{path}.{name}", item)
        elif name == "prediction_type":
            choice(("epsilon", "v_prediction", "sample"))(f"{path}.{name}", item)
        elif name == "timestep_spacing":
            choice(("leading", "trailing", "linspace"))(f"{path}.{name}", item)
        elif name in ("num_train_timesteps", "steps_offset"):
            integer(0)(f"{path}.{name}", item)
        elif name in ("clip_sample", "set_alpha_to_one", "thresholding", "rescale_betas_zero_snr"):
            boolean(f"{path}.{name}", item)
        elif name in ("beta_start", "beta_end"):
            number(0.0, 1.0)(f"{path}.{name}", item)
    return data


# ---------------------------------------------------------------------------------------------------- sections
@dataclass
class MotionModuleKwargs:
    """`unet_additional_kwargs.motion_module_kwargs`: MotionLoRA / motion embedding, plus AnimateDiff structure."""

    use_motion_embed: bool = key(False, boolean, "Motion-Inversion embedding", feeds="MIVAAdapterConfig.use_motion_embed")
    lora_rank: int = key(32, integer(1, MAX_RANK), "MotionLoRA rank", feeds="MIVAAdapterConfig.motion_lora_rank")
    lora_scale: float | None = key(
        1.0, optional(number(0.0, open_low=True)), "MotionLoRA network_alpha", feeds="MIVAAdapterConfig.motion_lora_scale"
    )
    num_attention_heads: int = key(8, fixed([8], _STRUCTURE), "AnimateDiff structure")
    num_transformer_block: int = key(1, fixed([1], _STRUCTURE), "AnimateDiff structure")
    attention_block_types: list = key(
        None,
        fixed([["Temporal_Self", "Temporal_Self"]], _STRUCTURE),
        "AnimateDiff structure",
        factory=lambda: ["Temporal_Self", "Temporal_Self"],
    )
    temporal_position_encoding: bool = key(True, fixed([True], _STRUCTURE), "AnimateDiff structure")
    temporal_position_encoding_max_len: int = key(32, fixed([32, 24], _STRUCTURE), "AnimateDiff structure")
    temporal_attention_dim_div: int = key(1, fixed([1], _STRUCTURE), "AnimateDiff structure")
    zero_initialize: bool = key(True, boolean, "init of proj_out; replaced by the loaded motion module weights")


@dataclass
class UNetAdditionalKwargs:
    """`unet_additional_kwargs`: which adapter parts exist and how they are shaped."""

    # AnimateDiff structure: fixed by the stock UNetMotionModel and the motion adapter checkpoint.
    use_motion_module: bool = key(True, fixed([True], _STRUCTURE + "; it always has motion modules"))
    motion_module_resolutions: list = key(None, fixed([[1, 2, 4, 8]], _STRUCTURE), factory=lambda: [1, 2, 4, 8])
    motion_module_mid_block: bool = key(False, boolean, "read from the motion adapter (use_motion_mid_block)")
    motion_module_decoder_only: bool = key(False, fixed([False], _STRUCTURE))
    motion_module_type: str = key("Vanilla", fixed(["Vanilla"], _STRUCTURE))
    use_inflated_groupnorm: bool = key(
        True,
        fixed(
            [True],
            "UNetMotionModel normalises every frame on its own "
            "(AnimateDiff's InflatedGroupNorm); false would normalise "
            "across frames",
        ),
    )
    unet_use_cross_frame_attention: bool = key(
        False,
        fixed(
            [False],
            "AnimateDiff's sparse-causal spatial attention "
            "is not used; cross-frame attention is the MIVA "
            "adapter's branch (sa_mode)",
        ),
    )
    unet_use_temporal_attention: bool = key(
        False, boolean, "research attn_temp: only a frozen random bias, not reproduced (docs/research.md#base-model)"
    )
    motion_module_kwargs: MotionModuleKwargs = key(None, section(MotionModuleKwargs), factory=MotionModuleKwargs)
    # Cross-attention: CA-LoRA, implicit prompt, spatiotemporal Q.
    use_ca_lora: bool = key(False, boolean, "CA-LoRA on K/V/O", feeds="MIVAAdapterConfig.use_ca_lora")
    ca_lora_rank: int | list[int] = key(
        32, one_or_list(integer(1, MAX_RANK)), "one per adapter", feeds="MIVAAdapterConfig.ca_lora_rank", per_adapter=True
    )
    ca_lora_scale: float | list[float] | None = key(
        1.0,
        one_or_list(optional(number(0.0, open_low=True))),
        "network_alpha, one per adapter",
        feeds="MIVAAdapterConfig.ca_lora_scale",
        per_adapter=True,
    )
    use_q_lora: bool = key(False, boolean, "CA-LoRA on Q too", feeds="MIVAAdapterConfig.use_q_lora")
    remove_WO: bool = key(
        False,
        fixed(
            [False],
            "a CA-LoRA adapter always has its out delta; research checkpoints "
            "without out-LoRA keys import with a zero out delta",
        ),
    )
    use_simple_CA: bool = key(False, boolean, "implicit prompt", feeds="MIVAAdapterConfig.ca_mode",
                                convert=lambda simple: "implicit" if simple else "lora")
    implicit_rank: int = key(64, integer(1, MAX_RANK), "miva: implicit prompt rank", feeds="MIVAAdapterConfig.implicit_rank")
    q_downsample: bool = key(False, boolean, "spatiotemporal Q", feeds="MIVAAdapterConfig.q_downsample")
    q_downsample_ratio: int = key(4, integer(1, 64), "spatial stride r", feeds="MIVAAdapterConfig.q_downsample_ratio")
    q_downsample_mode: str = key("nearest", choice(Q_DOWNSAMPLE_MODES), "miva", feeds="MIVAAdapterConfig.q_downsample_mode")
    ca_pe_mode: str | None = key(None, _ca_pe_mode, "PE of the spatiotemporal Q", feeds="MIVAAdapterConfig.ca_pe_mode")
    pe_style: str = key(
        "standard", choice(PE_STYLES), "miva; research imports use 'research'", feeds="MIVAAdapterConfig.pe_style"
    )
    # Spatial self-attention: the cross-frame (I2V) branch.
    use_i2v: bool = key(True, boolean, "miva: cross-frame branch", feeds="MIVAAdapterConfig.use_i2v")
    i2v_train_q: bool | None = key(
        None, optional(boolean), "miva; default: i2v_adapter.to_q in trainable_modules", feeds="MIVAAdapterConfig.i2v_train_q"
    )
    sa_mode: str = key("first", choice(SA_MODES), "keys/values of the branch", feeds="MIVAAdapterConfig.sa_mode")
    sa_first_frame_scale: float | str = key(
        0.5, _first_frame_scale, "first_prev weight", feeds="MIVAAdapterConfig.sa_first_frame_scale"
    )
    use_i2v_q_lora: bool = key(
        False,
        fixed(
            [False],
            "the cross-frame branch trains its dense to_q (i2v_train_q); "
            "research I2V LoRAs are folded into it on import",
        ),
    )
    use_i2v_out_lora: bool = key(
        False,
        fixed(
            [False], "the cross-frame branch trains its dense to_out; research I2V LoRAs are folded into it on import"
        ),
    )
    i2v_lora_rank: int = key(32, integer(1, MAX_RANK), "inert: the I2V LoRAs are off")
    i2v_lora_scale: float = key(1.0, fixed([1, 1.0], "research I2V LoRAs are imported with network_alpha 1"))
    use_motion_lora: bool = key(True, boolean, "miva: MotionLoRA", feeds="MIVAAdapterConfig.use_motion_lora")
    use_mask_branch: bool = key(False, boolean, "mask branch (M-MIVA)", feeds="MIVAAdapterConfig.use_mask_branch")
    # Orthogonal adapters and multi-adapter settings.
    oa_bin_id: int | None = research_key("unet_additional_kwargs.oa_bin_id", feeds="MIVAAdapterConfig.oa_bin_id")
    oa_bases_path: str | None = research_key("unet_additional_kwargs.oa_bases_path", check=path_value)
    adapter_weights: list[float] | None = key(
        None,
        optional(one_or_list(number())),
        "set_adapters(weights) / MIVAPipeline(adapter_weights); default [1] * adapters",
    )
    parallel_mode: str = key(DEFAULT_PARALLEL_MODE, choice(PARALLEL_MODES), "set_adapters(parallel_mode)")


@dataclass
class TrainData:
    """`train_data`: the clips of the motion to learn (each key sets the `TrainConfig` field the key map names)."""

    video_root: str | list[str] | None = research_key("train_data.video_root", check=optional(one_or_list(string)))
    prompt: str | None = research_key("train_data.prompt")
    n_sample_frames: int = research_key("train_data.n_sample_frames")
    width: int = research_key("train_data.width")
    height: int = research_key("train_data.height")
    sample_frame_rate: int | list[int] = research_key("train_data.sample_frame_rate")
    random_flip: bool = research_key("train_data.random_flip")
    mask_root: str | None = research_key("train_data.mask_root")


@dataclass
class ValidationData:
    """`validation_data`: inputs, outputs and sampling of inference (and of validation during training)."""

    image_path: str | None = key(None, path_value, "folder of input images (or one image)")
    prompt_path: str | list[str] | None = key(None, _image_selection, "image names, 'all' or 'newlamp'")
    prompts: str | list[str] | None = key(None, optional(one_or_list(string)), "one per image (MIVAPipeline prompt)")
    batch_prompt: str | list[str] | None = key(
        None, optional(one_or_list(string)), "one prompt, or one per adapter with multi_ca"
    )
    negative_prompt: str | None = key(None, optional(string), "miva", feeds="MIVAPipeline.negative_prompt")
    video_length: int = key(16, integer(2), "", feeds="MIVAPipeline.num_frames")
    width: int = key(512, multiple_of_8, "", feeds="MIVAPipeline.width")
    height: int = key(320, multiple_of_8, "", feeds="MIVAPipeline.height")
    num_inference_steps: int = key(50, integer(1), "", feeds="MIVAPipeline.num_inference_steps")
    guidance_scale: float = key(7.5, number(0.0), "", feeds="MIVAPipeline.guidance_scale")
    use_adain_norm: str = key(
        "off", choice(ADAIN_MODES, {True: "on", False: "off"}), "", feeds="MIVAPipeline.use_adain_norm"
    )
    shared_noise_ratio: float = key(0.0, number(0.0, 1.0), "", feeds="MIVAPipeline.shared_noise_ratio")
    first_frame_cond_type: str = key("lamp", choice(FIRST_FRAME_COND_TYPES), "", feeds="MIVAPipeline.first_frame_cond_type")
    use_dct_init: bool = key(False, boolean, "", feeds="MIVAPipeline.use_dct_init")
    dct_cutoff_ratio: float = key(0.23, number(0.0, 1.0), "", feeds="MIVAPipeline.dct_cutoff_ratio")
    dct_cutoff_shape: str = key("rect", choice(DCT_CUTOFF_SHAPES), "", feeds="MIVAPipeline.dct_cutoff_shape")
    cil_ratio: float = key(1.0, number(0.0, open_low=True), "", feeds="MIVAPipeline.cil_ratio")
    cil_analytic: bool = key(False, boolean, "", feeds="MIVAPipeline.cil_analytic")
    multi_ca: bool = key(False, boolean, "per-adapter prompts (batch_prompt)")
    text_emb_dir: str | None = key(None, path_value, "", feeds="MIVAPipeline.text_emb_dir")
    word_to_replace: str | list[str] | None = key(
        None, optional(one_or_list(string)), "", feeds="MIVAPipeline.word_to_replace"
    )
    CA_Map_visualization_resolution: str | list[str] | None = key(
        None, _ca_maps, "", feeds="MIVAPipeline.ca_map_resolutions"
    )
    # The mask branch (docs/mask_branch.md): MIVAPipeline(mask_branch=...) via MIVAConfig.mask_branch_inputs.
    mask_path: str | list[str] | None = key(None, optional(one_or_list(string)), "frame-0 mask of each mask adapter")
    mask_inference_stride: int = key(1, integer(1), "predict the mask stream every N steps")
    mask_inference_cutoff: float = key(1.0, number(0.0, 1.0, open_low=True), "fraction of steps the stream runs")
    mask_attention_mode: str = key("original", mask_attention_mode, "SA, CA or original (both)")
    use_image_guidance: bool = key(True, boolean, "the mask stream attends to the video's tokens too")
    hist_match: bool = key(False, boolean, "match frames to frame 0 (miva infer)")
    format: str = key("gif", choice(OUTPUT_FORMATS), "miva infer output")
    fps: int = key(8, integer(1), "miva infer output")
    # Where and when each adapter acts (miva.config.regions): MIVAPipeline(adapter_masks=, adapter_schedules=).
    adapter_masks: dict = key(None, mask_map, "adapter -> mask image, every image", factory=dict)
    image_masks: dict = key(None, image_mask_map, "image name -> {adapter -> mask image}", factory=dict)
    adapter_schedules: dict = key(None, schedule_map, "adapter -> one weight per frame", factory=dict)

    def __post_init__(self) -> None:
        check_schedule_lengths(self)
        if self.use_dct_init and self.first_frame_cond_type != "cinemo":
            raise ConfigError(
                f"validation_data.use_dct_init: true needs first_frame_cond_type: cinemo, got "
                f"{self.first_frame_cond_type!r}"
            )
        if self.prompts in ("all", "newlamp"):  # the seed README lists them under `prompts`; they select images
            if self.prompt_path not in (None, self.prompts):
                raise ConfigError(
                    f"validation_data.prompts: {self.prompts!r} selects images, but prompt_path is "
                    f"{self.prompt_path!r}; put the selection in prompt_path only"
                )
            self.prompt_path, self.prompts = self.prompts, None
        if isinstance(self.prompts, list) and isinstance(self.prompt_path, list):
            if len(self.prompts) != len(self.prompt_path):
                raise ConfigError(
                    f"validation_data.prompts: {len(self.prompts)} prompts for {len(self.prompt_path)} "
                    "images in prompt_path; give one prompt per image"
                )
        if isinstance(self.batch_prompt, list) and not self.multi_ca:
            raise ConfigError(
                "validation_data.batch_prompt: a list (one prompt per adapter) needs multi_ca: true; "
                "use a single string for one prompt for every image"
            )
        if self.text_emb_dir is not None and self.word_to_replace is not None:
            raise ConfigError(
                "validation_data.text_emb_dir: cannot be combined with word_to_replace (precomputed "
                "embeddings are not tokenized); remove one of them"
            )
