"""Research checkpoints written in the research key layout (docs/research.md#research-checkpoints), for the import
tests (`tests/loaders/test_research_import.py`) and the reliability tests of damaged files
(`tests/training/test_reliability.py`): one writer of each layout, shared by both."""

import torch

RANK = 4  # the LoRA rank every writer uses unless told otherwise


def spatial_cross_attentions(unet) -> list[str]:
    """The module names of the spatial cross-attentions (`...attn2`, not in motion modules) of a `UNetMotionModel`."""
    return [
        n[: -len(".processor")] for n in unet.attn_processors if n.endswith("attn2.processor") and "motion" not in n
    ]


def research_ca_checkpoint(unet, seed=1, q_lora=True, out_lora=True, rank=RANK, scale=0.25):
    """`...attn2.processor.to_{q,k,v,out}_lora.{down,up}.weight` with non-zero `up` (trained-looking): K and V
    always, Q with `q_lora`, out with `out_lora`; entries drawn from N(0, scale^2)."""
    g = torch.Generator().manual_seed(seed)
    ckpt = {}
    for layer in spatial_cross_attentions(unet):
        attn = unet.get_submodule(layer)
        projs = {"to_k": attn.to_k, "to_v": attn.to_v}
        if out_lora:
            projs["to_out"] = attn.to_out[0]
        if q_lora:
            projs["to_q"] = attn.to_q
        for proj, linear in projs.items():
            ckpt[f"{layer}.processor.{proj}_lora.down.weight"] = torch.randn(rank, linear.in_features, generator=g) * scale
            ckpt[f"{layer}.processor.{proj}_lora.up.weight"] = torch.randn(linear.out_features, rank, generator=g) * scale
    return ckpt


def research_motion_and_i2v_checkpoints(unet, seed=2):
    """Research split files: motion LoRAs under `temporal_transformer...attention_blocks.K.processor`, and the I2V
    adapter (`i2v_adapter.to_q/k/v` copies of attn1, a retrained to_q, random to_out) at every spatial block."""
    g = torch.Generator().manual_seed(seed)
    motion, i2v, modules = {}, {}, {}
    for prefix, blocks in (("down_blocks", unet.down_blocks), ("up_blocks", unet.up_blocks)):
        for i, block in enumerate(blocks):
            for j, mm in enumerate(getattr(block, "motion_modules", [])):
                for k in range(2):
                    attn = getattr(mm.transformer_blocks[0], f"attn{k + 1}")
                    base = f"{prefix}.{i}.motion_modules.{j}.temporal_transformer.transformer_blocks.0"
                    key = f"{base}.attention_blocks.{k}.processor"
                    modules[key] = attn
                    for proj, linear in (
                        ("to_q", attn.to_q),
                        ("to_k", attn.to_k),
                        ("to_v", attn.to_v),
                        ("to_out", attn.to_out[0]),
                    ):
                        motion[f"{key}.{proj}_lora.down.weight"] = (
                            torch.randn(RANK, linear.in_features, generator=g) / 4
                        )
                        motion[f"{key}.{proj}_lora.up.weight"] = torch.randn(linear.out_features, RANK, generator=g) / 4
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") and "motion" not in name:
            block = name[: -len(".attn1.processor")]
            attn1 = unet.get_submodule(f"{block}.attn1")
            c = attn1.to_q.weight.shape[0]
            i2v[f"{block}.i2v_adapter.to_q.weight"] = attn1.to_q.weight + torch.randn(c, c, generator=g) / 10
            i2v[f"{block}.i2v_adapter.to_k.weight"] = attn1.to_k.weight.clone()
            i2v[f"{block}.i2v_adapter.to_v.weight"] = attn1.to_v.weight.clone()
            i2v[f"{block}.i2v_adapter.to_out.0.weight"] = torch.randn(c, c, generator=g) / 4
            i2v[f"{block}.i2v_adapter.to_out.0.bias"] = torch.randn(c, generator=g) / 4
    return motion, i2v, modules
