"""What fine-tuning trains. SpurgenModule (spurgen/module.py) asks its tuning for the parameter groups, which
modules stay in eval mode, and what to do after each optimiser step; the train stage calls `prepare(parts)`
before the data are tokenised (textual inversion adds its token there).

FullTuning: DreamBooth's, the UNet and the text encoder (METHOD.md, Training). TextualInversion: one new token's
input embedding, every other weight frozen and, after each step, restored bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from spurgen.errors import ConfigError


class FullTuning:
    """The UNet and (train.train_text_encoder) the text encoder, at train.lr_unet / train.lr_text_encoder."""

    def prepare(self, parts: Any) -> None:
        """Nothing to add: the parts are trained as built (LoRA adapters, if any, are added by the stage)."""

    def param_groups(self, module: Any) -> list[dict]:
        cfg = module.settings
        groups = [{"params": [p for p in module.unet.parameters() if p.requires_grad], "lr": cfg.lr_unet}]
        if cfg.train_text_encoder:
            te = [p for p in module.text_encoder.parameters() if p.requires_grad]
            groups.append({"params": te, "lr": cfg.lr_text_encoder})
        return groups

    def frozen_modules(self, module: Any) -> list[nn.Module]:
        return [] if module.settings.train_text_encoder else [module.text_encoder]

    def after_optimizer_step(self, module: Any) -> None:
        pass


class TextualInversion:
    """Textual inversion: one new token in the tokenizer, its input-embedding row trained, all else frozen.

    `prepare` adds `token` to the tokenizer, grows the text encoder's input embeddings by one row initialised
    to the mean embedding of `initializer`'s tokens, and freezes every weight but that matrix. The optimiser
    sees the matrix (rows cannot be separate parameters of nn.Embedding); after every step, every row but the
    token's is copied back from a frozen copy, so the other embeddings stay bit for bit (weight decay and Adam
    would otherwise move them).
    """

    def __init__(self, token: str, initializer: str, lr: float):
        if not token or " " in token:
            raise ConfigError("method.tuning.token", f"must be one token without spaces, got {token!r}")
        self.token, self.initializer, self.lr = str(token), str(initializer), float(lr)
        self.token_id: int | None = None
        self._original: torch.Tensor | None = None  # (V, D) the embedding matrix before training

    def prepare(self, parts: Any) -> None:
        tok, te = parts.tokenizer, parts.text_encoder
        if tok.add_tokens([self.token]) != 1:
            raise ConfigError("data.identifier", f"{self.token!r} is already a token of this tokenizer")
        init_ids = tok(self.initializer, add_special_tokens=False).input_ids
        if not init_ids:
            raise ConfigError("method.tuning.initializer", f"{self.initializer!r} has no tokens")
        te.resize_token_embeddings(len(tok), mean_resizing=False)  # the new row is set below
        self.token_id = tok.convert_tokens_to_ids(self.token)
        weight = te.get_input_embeddings().weight  # (V + 1, D)
        with torch.no_grad():
            weight[self.token_id] = weight[init_ids].mean(dim=0)
        parts.unet.requires_grad_(False)
        te.requires_grad_(False)
        weight.requires_grad_(True)
        self._original = weight.detach().clone()

    def _weight(self, module: Any) -> nn.Parameter:
        return module.text_encoder.get_input_embeddings().weight

    def param_groups(self, module: Any) -> list[dict]:
        return [{"params": [self._weight(module)], "lr": self.lr}]

    def frozen_modules(self, module: Any) -> list[nn.Module]:
        return [module.unet, module.text_encoder]

    @torch.no_grad()
    def after_optimizer_step(self, module: Any) -> None:
        """Every row but the token's back to its value before training (bit for bit)."""
        weight = self._weight(module)
        keep = torch.ones(weight.shape[0], dtype=torch.bool, device=weight.device)
        keep[self.token_id] = False
        original = self._original.to(weight.device, weight.dtype)
        weight[keep] = original[keep]
