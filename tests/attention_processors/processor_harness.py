"""Processor tests run one processor on a diffusers `Attention` outside any UNet. These helpers are the one place
that sets up what the UNet would provide: the long-lived adapter bookkeeping (`MIVAContext`) and the per-call
values its hooks would record (`miva_call`). A module, not `conftest.py`: test folders have conftests of their own,
so `from conftest import ...` would depend on which one was imported first."""

from miva.attention_processors import MIVAContext, miva_call


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
