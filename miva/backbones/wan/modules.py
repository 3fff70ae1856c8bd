"""The adapter modules of MIVA on Wan2.1 and the cross-frame attention maths (pure functions over tensors).

Shapes: the DiT's tokens are `(batch, frames*tokens_per_frame, dim)`, frame-major (diffusers patchifies
`(batch, C, F, H, W)` and flattens `F, h, w` in that order). Heads are split as `(batch, tokens, heads, head_dim)`,
the layout of diffusers' `dispatch_attention_fn`.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from diffusers.models.attention_dispatch import dispatch_attention_fn
from torch import nn

from ...attention_processors.adapter_config import parse_first_frame_scale
from ...attention_processors.lora import LoRADelta, compute_dtype
from ...attention_processors.parts import CROSS, LORA_DELTAS, SELF
from .config import WanAdapterConfig

__all__ = ["WanCrossAttnAdapter", "WanFirstFrameWeight", "WanSelfAttnAdapter", "cross_frame_attention", "lora_deltas"]


def _add_lora(module: nn.Module, attn, projections: tuple[str, ...], rank: int, alpha: float | None) -> None:
    """`<projection>_lora` deltas (`LoRADelta`, zero at init) for each of `projections` of `attn`."""
    for delta, projection in LORA_DELTAS.items():
        if projection in projections:
            linear = attn.to_out[0] if projection == "to_out" else getattr(attn, projection)
            setattr(module, delta, LoRADelta(linear.in_features, linear.out_features, rank, alpha))


def lora_deltas(module: nn.Module) -> dict[str, LoRADelta]:
    """`{projection: delta}` of the LoRA deltas `module` holds (`to_q`, `to_k`, `to_v`, `to_out`)."""
    return {projection: getattr(module, delta) for delta, projection in LORA_DELTAS.items()
            if getattr(module, delta, None) is not None}


class WanFirstFrameWeight(nn.Module):
    """`sa_first_frame_scale="adaptive_<T>"`: `s = softmax(linear(SiLU(temb)) / T)[..., 0]`, one weight per video.
    `temb`: (batch, temb_channels), the time embedding before the SiLU of Wan's time projection (diffusers'
    `condition_embedder` returns it first). The width comes from the model (the official code hard-codes 1536)."""

    def __init__(self, temb_channels: int, temperature: float):
        super().__init__()
        self.linear = nn.Linear(temb_channels, 2)
        self.temperature = temperature

    def forward(self, temb: torch.Tensor) -> torch.Tensor:
        logits = self.linear(F.silu(temb.to(compute_dtype(self.linear))))  # layerwise casting: not the storage dtype
        return (logits / self.temperature).softmax(dim=-1)[..., 0]


class WanSelfAttnAdapter(nn.Module):
    """One adapter's parts at one Wan block's self-attention `attn1`.

    - the cross-frame branch (`use_i2v`): `x = x + o(attention(x))`, added ungated after the gated self-attention.
      Own `q, k, v, o` and RMS `norm_q, norm_k` (q, k, v and the norms start as copies of the block's
      self-attention; `o` starts at zero, so a new adapter is a no-op); no rotary embedding;
    - the DiT's MotionLoRA (`use_motion_lora`): LoRA deltas `to_q_lora` ... `to_out_lora` on the 3-D
      self-attention (`motion_lora_rank`, `motion_lora_scale`).
    """

    part_kind = SELF

    def __init__(self, attn, config: WanAdapterConfig, temb_channels: int):
        super().__init__()
        self.has_branch = config.use_i2v
        if config.use_motion_lora:
            _add_lora(self, attn, ("to_q", "to_k", "to_v", "to_out"), config.motion_lora_rank,
                      config.motion_lora_scale)
        self.has_lora = config.use_motion_lora
        if not self.has_branch:
            return
        self.sa_mode = config.sa_mode
        self.research_exact_first = config.research_exact_first
        self.scale_kind, self.scale_value = parse_first_frame_scale(config.sa_first_frame_scale)
        self.heads = attn.heads
        self.q, self.k, self.v = (copy.deepcopy(attn.to_q), copy.deepcopy(attn.to_k), copy.deepcopy(attn.to_v))
        self.norm_q, self.norm_k = copy.deepcopy(attn.norm_q), copy.deepcopy(attn.norm_k)
        self.o = nn.Linear(attn.to_out[0].in_features, attn.to_out[0].out_features)
        nn.init.zeros_(self.o.weight)
        nn.init.zeros_(self.o.bias)
        self.weight_module = None
        if self.scale_kind == "adaptive" and self.sa_mode == "first_prev":  # the weight acts only in first_prev
            self.weight_module = WanFirstFrameWeight(temb_channels, self.scale_value)
        self.requires_grad_(True)

    def first_frame_weight(self, timestep: torch.Tensor | None, temb: torch.Tensor | None):
        """`s` of `first_prev`: a float, or `(batch,)` from the timestep (`"linear"`, t / 1000) or the time
        embedding (`"adaptive"`)."""
        if self.scale_kind == "float":
            return self.scale_value
        if self.scale_kind == "linear":
            if timestep is None:
                raise RuntimeError("sa_first_frame_scale='linear' needs the timestep: run the whole transformer")
            return timestep.float() / 1000.0
        if temb is None or temb.ndim != 2:
            raise RuntimeError("sa_first_frame_scale='adaptive' needs the (batch, dim) time embedding: run the whole "
                               "transformer (Wan2.2's per-token timesteps are not supported)")
        return self.weight_module(temb)

    def branch(self, x: torch.Tensor, frames: int, timestep=None, temb=None, backend=None) -> torch.Tensor:
        """`x`: (batch, frames*tokens, dim) -> the branch `o(attention)`, same shape. `backend`: diffusers'
        attention backend (None: its default), as set by `set_attention_backend`."""
        q = self.norm_q(self.q(x)).unflatten(2, (self.heads, -1))
        k = self.norm_k(self.k(x)).unflatten(2, (self.heads, -1))
        v = self.v(x).unflatten(2, (self.heads, -1))
        s = self.first_frame_weight(timestep, temb) if self.sa_mode == "first_prev" else None
        out = cross_frame_attention(q, k, v, frames, self.sa_mode, s, research_exact_first=self.research_exact_first,
                                    backend=backend)
        return self.o(out.flatten(2, 3).type_as(x))


def _attend(q, k, v, backend=None):
    return dispatch_attention_fn(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, backend=backend)


def cross_frame_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, frames: int, mode: str,
                          s: float | torch.Tensor | None = None, *, research_exact_first: bool = False,
                          backend=None) -> torch.Tensor:
    """Each frame's queries attend to other frames' keys/values. `q, k, v`: (batch, frames*n, heads, head_dim)
    -> (batch, frames*n, heads, head_dim).

    - `"first"`: every frame attends to all n tokens of frame 0 (`research_exact_first`: frame i attends only to
      tokens `[i*n/F, (i+1)*n/F)` of frame 0, as the official Wan code does; n must divide by F);
    - `"prev"`: frame i attends to frame i-1, frame 0 to itself;
    - `"first_prev"`: keys `[k_first; k_prev]`, values `[s v_first; (1 - s) v_prev]` under one softmax; `s` a float
      or `(batch,)`.
    """
    batch, length, heads, dim = q.shape
    if length % frames:
        raise ValueError(f"cross-frame branch: {length} tokens do not split into {frames} frames")
    n = length // frames
    if mode == "first" and not research_exact_first:  # fold frames into the queries: no key/value copies
        return _attend(q, k[:, :n], v[:, :n], backend)
    qf = q.reshape(batch * frames, n, heads, dim)
    kf, vf = k.view(batch, frames, n, heads, dim), v.view(batch, frames, n, heads, dim)
    if mode == "first":
        if n % frames:
            raise ValueError(f"research_exact_first=True (the official 'first' mode) needs tokens per frame ({n}) "
                             f"divisible by the latent frame count ({frames}); the official code crashes here too")
        keys = kf[:, 0].reshape(batch * frames, n // frames, heads, dim)
        values = vf[:, 0].reshape(batch * frames, n // frames, heads, dim)
        return _attend(qf, keys, values, backend).reshape(batch, length, heads, dim)
    k_prev = torch.cat([kf[:, :1], kf[:, :-1]], dim=1)
    v_prev = torch.cat([vf[:, :1], vf[:, :-1]], dim=1)
    if mode == "prev":
        keys, values = k_prev, v_prev
    elif mode == "first_prev":
        if torch.is_tensor(s):
            s = s.to(v.dtype).view(batch, 1, 1, 1, 1)
        k_first, v_first = kf[:, :1].expand_as(kf), vf[:, :1].expand_as(vf)
        keys = torch.cat([k_first, k_prev], dim=2)
        values = torch.cat([v_first * s, v_prev * (1 - s)], dim=2)
    else:
        raise ValueError(f"sa_mode={mode!r} is not one of ['first', 'prev', 'first_prev']")
    keys = keys.reshape(batch * frames, -1, heads, dim)
    values = values.reshape(batch * frames, -1, heads, dim)
    return _attend(qf, keys, values, backend).reshape(batch, length, heads, dim)


_ACTIVATIONS = {"gelu": lambda: nn.GELU(), "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "silu": nn.SiLU,
                "relu": nn.ReLU, "none": nn.Identity}


class WanCrossAttnAdapter(nn.Module):
    """One adapter's parts at one Wan block's text cross-attention `attn2`.

    - the implicit prompt that replaces it (`ca_mode="implicit"`, official `CA_mode="simple"`):
      `CA3(act(CA_norm(CA2(q_n))))`, `q_n = norm_q(to_q(x))` from the frozen base cross-attention. `CA2`: dim ->
      rank, `CA_norm`: LayerNorm(rank) (or none), `CA3`: rank -> dim, zero-initialised. The text is not read;
    - or CA-LoRA (`use_ca_lora`): deltas on K/V (text side) and O, and on Q with `use_q_lora`.
    """

    part_kind = CROSS

    def __init__(self, attn, config: WanAdapterConfig):
        super().__init__()
        self.has_lora = config.use_ca_lora
        if self.has_lora:
            projections = ("to_q",) * config.use_q_lora + ("to_k", "to_v", "to_out")
            _add_lora(self, attn, projections, config.ca_lora_rank, config.ca_lora_scale)
        self.implicit = config.ca_mode == "implicit"
        if not self.implicit:
            return
        dim = attn.to_q.out_features
        rank, bias = config.implicit_rank, config.implicit_bias
        self.CA2 = nn.Linear(dim, rank, bias=bias)
        self.CA_norm = nn.LayerNorm(rank) if config.implicit_norm else None
        self.act = _ACTIVATIONS[config.implicit_act]()
        self.CA3 = nn.Linear(rank, dim, bias=bias)
        nn.init.zeros_(self.CA3.weight)
        if bias:
            nn.init.zeros_(self.CA3.bias)

    def implicit_prompt(self, q_n: torch.Tensor) -> torch.Tensor:
        """`q_n`: (batch, tokens, dim) normalised base queries -> (batch, tokens, dim)."""
        h = self.CA2(q_n)
        if self.CA_norm is not None:
            h = self.CA_norm(h)
        return self.CA3(self.act(h))
