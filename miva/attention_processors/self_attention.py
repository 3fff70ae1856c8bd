"""`MIVASelfAttnProcessor`: frozen spatial self-attention plus the I2V / cross-frame adapter branch(es)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .adapter_config import MIVAAdapterConfig, parse_first_frame_scale
from .attention_utils import finish_output, prepare_mask, project_out
from .base import MIVAProcessorBase
from .context import CallState
from .lora import compute_dtype, weights_readable
from .parts import SELF, has_part_at
from .split_inference import carried_reference_kv, row_window


class CrossFrameAdapter(nn.Module):
    """One adapter's cross-frame branch at one spatial `attn1` (docs/research.md#cross-frame-adapter).

    Keys/values are attn1's own (frozen); the branch owns `to_out` (zero-init, so a new adapter is a no-op), an
    optional trainable copy of attn1's `to_q`, and for `sa_first_frame_scale="adaptive_<T>"` a `weight_module`
    (`Linear(temb_channels, 2)`) giving the first-frame weight `s = softmax(W SiLU(temb) / T)[0]`. With
    `use_mask_branch`, also the mask stream's `mask_to_q` / `mask_to_out` (docs/mask_branch.md).
    """

    part_kind = SELF

    def __init__(self, attn, config: MIVAAdapterConfig, temb_channels: int):
        super().__init__()
        self.sa_mode = config.sa_mode
        self.scale_kind, self.scale_value = parse_first_frame_scale(config.sa_first_frame_scale)
        self.to_q = copy.deepcopy(attn.to_q).requires_grad_(True) if config.i2v_train_q else None
        self.to_out = nn.Linear(attn.to_out[0].in_features, attn.to_out[0].out_features, bias=True)
        nn.init.zeros_(self.to_out.weight)
        nn.init.zeros_(self.to_out.bias)
        self.weight_module = nn.Linear(temb_channels, 2) if self.scale_kind == "adaptive" else None
        # Mask branch (docs/mask_branch.md): the mask stream's W_Q / W_O, trainable copies of attn1's frozen ones.
        mask = config.use_mask_branch
        self.mask_to_q = copy.deepcopy(attn.to_q).requires_grad_(True) if mask else None
        self.mask_to_out = copy.deepcopy(attn.to_out[0]).requires_grad_(True) if mask else None

    def group_key(self, name: str) -> tuple:
        """Branches with equal keys share keys/values (and are batched into one SDPA call)."""
        if self.sa_mode != "first_prev":
            return (self.sa_mode,)
        if self.scale_kind == "adaptive":
            return (self.sa_mode, "adaptive", name)
        return (self.sa_mode, self.scale_kind, self.scale_value)

    def first_frame_weight(self, state: CallState, num_frames: int) -> float | torch.Tensor:
        """`s` of `first_prev`: a float, or a per-row tensor (batch*frames, 1, 1) from the call's timestep or time
        embedding (`state.forward`)."""
        if self.scale_kind == "float":
            return self.scale_value
        values = state.forward
        if self.scale_kind == "linear":
            if values.timestep is None:
                raise RuntimeError("sa_first_frame_scale='linear' needs the timestep: call the UNet, not the layer")
            s = values.timestep.float() / 1000.0
        else:
            if values.temb is None:
                raise RuntimeError("sa_first_frame_scale='adaptive' needs the time embedding: call the UNet")
            logits = self.weight_module(F.silu(values.temb.to(compute_dtype(self.weight_module))))
            s = (logits / self.scale_value).softmax(dim=-1)[:, 0]
        return s.repeat_interleave(num_frames)[:, None, None]


class MIVASelfAttnProcessor(MIVAProcessorBase):
    """Replaces the processor of every spatial `attn1`. Input `(batch*frames, h*w, channels)`, frame inner.

    Output = frozen self-attention + `sum_i w_i * branch_i` (in both parallel modes, as in the research code). A
    branch's queries attend to frame 0 (`"first"`), to the previous frame (`"prev"`, frame 0 to itself), or to
    both with values `[s V_first; (1 - s) V_prev]` under one softmax (`"first_prev"`).
    """

    part_kind = SELF

    def build_adapter(self, attn, name, config):
        if not has_part_at(config, SELF):
            return None
        return CrossFrameAdapter(attn, config, self.context.temb_channels)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None):
        residual = hidden_states
        kv_source = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        mask = prepare_mask(attn, attention_mask, kv_source.shape[1], hidden_states.shape[0])
        query, key, value = attn.to_q(hidden_states), attn.to_k(kv_source), attn.to_v(kv_source)
        guidance = self.context.call_state().mask_guidance  # the mask branch (docs/mask_branch.md)
        stream = None
        if guidance is not None and guidance.stream_rows:  # the mask stream's rows follow the video's
            if mask is not None:
                raise ValueError(f"{self.layer_name}: attention masks are not supported with the mask branch")
            stream = guidance.stream_attention(self, attn, hidden_states, key, value)
            video = guidance.video_rows(hidden_states.shape[0])
            hidden_states, query, key, value = hidden_states[:video], query[:video], key[:video], value[:video]
        out = project_out(attn, self.attend(query, key, value, attn.heads, mask))
        active = self.context.active_adapters(self.adapters)
        if active:
            state = self.context.call_state()
            frames = state.frames(self.layer_name)
            window = None if stream is not None else row_window(state, self.layer_name, rows=hidden_states.shape[0],
                                                                frames=frames)  # (the mask rows: whole videos)
            if window is None and hidden_states.shape[0] % frames:
                raise ValueError(f"{self.layer_name}: batch {hidden_states.shape[0]} is not a multiple of "
                                 f"num_frames={frames}")
            # A masked adapter's branch is scaled per token: w_i * g_i, (batch*frames, h*w, 1).
            active = [(i, name, _gated_weight(w, self.spatial_gate(state, name, hidden_states,
                                                                   whole_videos=stream is not None)))
                      for i, name, w in active]
            out = out + self._branches(hidden_states, query, key, value, active=active, frames=frames,
                                       heads=attn.heads, window=window, state=state)
        if stream is not None:
            out = torch.cat([out, attn.to_out[1](stream)])
        return finish_output(attn, out, residual)

    def _branches(self, x, query, key, value, *, active, frames, heads, window, state):
        """Sum of `w_i * to_out_i(a_i)` over the active cross-frame branches, one SDPA call per K/V layout.
        `window`: the `(start, stop)` rows of the batch this call sees under split inference (None: all); `state`:
        the call's `CallState`."""
        # Under split inference: each row's reference frames' keys/values, once for all groups of this call.
        references = self._carried_references(key, value, frames, window, state) if window is not None else None
        guidance = state.mask_guidance
        gated = guidance is not None and guidance.gates(SELF)
        if gated and window is not None:
            raise ValueError(f"{self.layer_name}: mask-guided attention does not support FreeNoise split inference")
        groups: dict[tuple, list] = {}
        for _, name, weight in active:
            adapter = self.adapters[name]
            gate = None if not gated else guidance.gate(name, state.spatial_size(self.layer_name), x.shape[0],
                                                        x.dtype, includes_stream=False)  # x: the video rows
            groups.setdefault(adapter.group_key(name), []).append((adapter, weight if gate is None else gate * weight))
        total = 0.0
        for members in groups.values():
            adapters = [a for a, _ in members]
            # Unique queries of the group: attn1's own (shared by every branch without a trainable W_Q) first.
            queries, index_of, shared_index = [], [], None
            for adapter in adapters:
                if adapter.to_q is None:
                    if shared_index is None:
                        shared_index = len(queries)
                        queries.append(query)
                    index_of.append(shared_index)
                else:
                    index_of.append(len(queries))
                    queries.append(adapter.to_q(x))
            outputs = self._attend_group(adapters[0], queries, key, value, frames=frames, heads=heads, state=state,
                                         window=window, references=references)
            for qi, output in enumerate(outputs):
                readers = [member for member, i in zip(members, index_of) if i == qi]
                if len(readers) == 1 or not all(weights_readable(a.to_out) and not torch.is_tensor(w)
                                                for a, w in readers):
                    for adapter, weight in readers:  # through to_out's forward (offloading hooks may own it)
                        branch = adapter.to_out(output)
                        total = total + (branch if _is_one(weight) else branch * weight)
                else:  # same attention output: sum_i w_i (W_i o + b_i) = (sum_i w_i W_i) o + sum_i w_i b_i, one matmul
                    weight = sum(adapter.to_out.weight * w for adapter, w in readers)
                    bias = sum(adapter.to_out.bias * w for adapter, w in readers)
                    total = total + F.linear(output, weight, bias)
        return total

    def _attend_group(self, adapter, queries, key, value, *, frames, heads, state, window=None, references=None):
        """Attend each query set `(rows, hw, C)` to the group's cross-frame keys/values in one SDPA call. `window`:
        the rows this call sees under split inference (None: whole videos), `references` their carried reference
        frames. One path; its only fast variant: `"first"` on whole videos folds the frames into the query tokens
        (every frame of a video attends to the same keys, so none are copied)."""
        n = len(queries)
        if adapter.sa_mode == "first" and window is None:
            bf, hw, channels = key.shape
            batch = bf // frames
            q = torch.cat([qi.reshape(batch, frames * hw, -1) for qi in queries], dim=1)
            k, v = key.view(batch, frames, hw, channels)[:, 0], value.view(batch, frames, hw, channels)[:, 0]
            return [o.reshape(bf, hw, -1) for o in self.attend(q, k, v, heads).chunk(n, dim=1)]
        k_all, v_all = self._reference_kv(adapter, key, value, frames=frames, state=state, window=window,
                                          references=references)
        out = self.attend(torch.cat(queries, dim=1) if n > 1 else queries[0], k_all, v_all, heads)
        return list(out.chunk(n, dim=1)) if n > 1 else [out]

    def _reference_kv(self, adapter, key, value, *, frames, state, window, references):
        """What each row attends to under `adapter.sa_mode`, `(rows, hw or 2*hw, C)` keys and values: frame 0
        (`"first"`), the previous frame (`"prev"`), or both with values `[s V_first; (1 - s) V_prev]`
        (`"first_prev"`). Whole videos read this call's `key`/`value` `(batch*frames, hw, C)`; split inference the
        carried `references` `(k_first, v_first, k_prev, v_prev)`."""
        s = adapter.first_frame_weight(state, frames) if adapter.sa_mode == "first_prev" else None
        if window is not None:
            k_first, v_first, k_prev, v_prev = references
            if adapter.sa_mode == "first":
                return k_first, v_first
            if adapter.sa_mode == "prev":
                return k_prev, v_prev
            if torch.is_tensor(s):
                s = s[window[0]:window[1]].to(value.dtype)
            return torch.cat([k_first, k_prev], dim=1), torch.cat([v_first * s, v_prev * (1 - s)], dim=1)
        bf, hw, channels = key.shape
        batch = bf // frames
        k, v = key.view(batch, frames, hw, channels), value.view(batch, frames, hw, channels)
        if adapter.sa_mode == "prev":  # ("first" on whole videos never gets here: `_attend_group` folds it)
            return (torch.cat([k[:, :1], k[:, :-1]], dim=1).reshape(bf, hw, channels),
                    torch.cat([v[:, :1], v[:, :-1]], dim=1).reshape(bf, hw, channels))
        s = s.to(value.dtype).view(batch, frames, 1, 1) if torch.is_tensor(s) else s
        return _first_prev_kv(k, v, s)

    def _carried_references(self, key, value, frames, window, state):
        """`(k_first, v_first, k_prev, v_prev)` of the rows `window` (split inference), each (rows, hw, C), with the
        reference frames carried over from earlier chunks (`split_inference.carried_reference_kv`)."""
        cache = state.forward.split.reference_cache(self.layer_name, window)  # emptied at a forward's first chunk
        return carried_reference_kv(cache, key, value, frames=frames, window=window)


def _gated_weight(weight: float, gate: torch.Tensor | None):
    """`weight`, or `weight * gate` (a per-token tensor) for a masked adapter."""
    return weight if gate is None else gate * weight


def _is_one(weight) -> bool:
    return not torch.is_tensor(weight) and weight == 1.0


def _first_prev_kv(k: torch.Tensor, v: torch.Tensor, s) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys `[k_first; k_prev]` and values `[s v_first; (1 - s) v_prev]` of `first_prev`, each written once into
    one `(batch*frames, 2*hw, C)` tensor (no expanded copies or concatenations). `k`, `v`: `(batch, frames, hw, C)`;
    `s`: a float or `(batch, frames, 1, 1)`. The previous frame of frame 0 is frame 0 itself."""
    batch, frames, hw, channels = k.shape
    k_all = k.new_empty(batch, frames, 2, hw, channels)
    k_all[:, :, 0] = k[:, :1]
    k_all[:, 1:, 1] = k[:, :-1]
    k_all[:, :1, 1] = k[:, :1]
    v_all = v.new_empty(batch, frames, 2, hw, channels)
    rest = 1 - s
    v_all[:, :, 0] = v[:, :1] * s
    v_all[:, 1:, 1] = v[:, :-1] * (rest[:, 1:] if torch.is_tensor(rest) else rest)
    v_all[:, :1, 1] = v[:, :1] * (rest[:, :1] if torch.is_tensor(rest) else rest)
    return k_all.view(batch * frames, 2 * hw, channels), v_all.view(batch * frames, 2 * hw, channels)
