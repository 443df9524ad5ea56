"""LoRA (peft) as an alternative to full fine-tuning of the UNet and the text encoder (train.lora_rank > 0).

Only the adapters train; before pipeline/ is saved they are merged into the base weights and the peft
layers are replaced by the plain layers again, so pipeline/ is a standard diffusers folder.
"""

from __future__ import annotations

from torch import nn

from spurgen.errors import SpurgenError

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")  # diffusers attention projections
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")  # CLIP text encoder attention


def apply_lora(
    model: nn.Module, targets: tuple[str, ...], rank: int, alpha: float | None = None, dropout: float = 0.0
) -> nn.Module:
    """Freeze `model` and inject trainable LoRA adapters of `rank` into the modules named in `targets`."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as exc:  # pragma: no cover - peft is a dependency
        raise SpurgenError("train.lora_rank > 0 needs peft: pip install peft") from exc
    if rank <= 0:
        raise ValueError(f"LoRA rank must be > 0, got {rank}")
    model.requires_grad_(False)
    config = LoraConfig(
        r=int(rank),
        lora_alpha=float(alpha or rank),
        lora_dropout=float(dropout),
        target_modules=list(targets),
    )
    model = inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    return model


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA layer into its base layer and put the base layer back; returns how many."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, module.get_base_layer())
            merged += 1
    return merged


def lora_parameters(model: nn.Module) -> int:
    return sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)


def add_lora(parts, rank: int, alpha: float | None, dropout: float, train_text_encoder: bool) -> None:
    """LoRA on the UNet's attention, and on the text encoder's when it trains (METHOD.md trains both)."""
    apply_lora(parts.unet, UNET_TARGETS, rank, alpha, dropout)
    if train_text_encoder:
        apply_lora(parts.text_encoder, TEXT_TARGETS, rank, alpha, dropout)
