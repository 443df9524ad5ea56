"""Tiny randomly initialised Stable Diffusion parts and a tiny CLIP tokenizer, built offline.

They keep SD's structure (UNet2DConditionModel with cross-attention, AutoencoderKL, CLIPTextModel, a
byte-level CLIP BPE tokenizer) at a size that trains in a fraction of a second per step on a CPU. Their
numbers mean nothing: every output of a run on them is marked `model_is_tiny_random`.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from spurgen.models.parts import SDParts
from spurgen.models.schedulers import ddim_sampler, sd_noise_scheduler

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
DEFAULT_WORDS = ("a", "photo", "of", "sks", "flower", "the", "on", "in")


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP/GPT-2 byte-level alphabet: printable bytes map to themselves, the rest to unused code points.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def write_tiny_tokenizer_files(folder: Path, words: tuple[str, ...] = ()) -> Path:
    """Write vocab.json + merges.txt for a character-level CLIP BPE (plus whole-word merges for `words`)."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    vocab_list = alphabet + [c + "</w>" for c in alphabet]
    merges: list[str] = []
    for word in words:  # left-to-right merges so that each listed word becomes one token
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        current = symbols[0]
        for sym in symbols[1:]:
            merged = current + sym
            if f"{current} {sym}" not in merges:
                merges.append(f"{current} {sym}")
            if merged not in vocab_list:
                vocab_list.append(merged)
            current = merged
    vocab_list += [BOS, EOS]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab_list)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges))
    return folder


@lru_cache(maxsize=4)
def _tokenizer_dir(words: tuple[str, ...]) -> str:
    return str(write_tiny_tokenizer_files(Path(tempfile.mkdtemp(prefix="spurgen-tok-")), words))


def build_tiny_tokenizer(max_length: int = 77, words: tuple[str, ...] = ()) -> CLIPTokenizer:
    """A character-level CLIP BPE tokenizer with whole-word tokens for `words` (model/tokenizer=tiny)."""
    # transformers 5 ignores vocab_file/merges_file passed to the constructor (ENVIRONMENT.md):
    # from_pretrained on a folder is the path that works.
    tok = CLIPTokenizer.from_pretrained(_tokenizer_dir(tuple(words)))
    tok.model_max_length = max_length
    tok.pad_token = EOS
    return tok


def random_text_encoder(
    tokenizer: CLIPTokenizer, hidden: int, layers: int, heads: int, intermediate: int, max_length: int
) -> CLIPTextModel:
    """A randomly initialised CLIP text encoder sized for `tokenizer`'s vocabulary."""
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            intermediate_size=intermediate,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            max_position_embeddings=max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )


def build_tiny_text_encoder(
    hidden: int = 32,
    layers: int = 2,
    max_length: int = 32,
    words: tuple[str, ...] = DEFAULT_WORDS,
    init_seed: int = 0,
) -> CLIPTextModel:
    """A random CLIP text model sized for the tiny tokenizer of the same `words` (model/text_encoder=tiny)."""
    tokenizer = build_tiny_tokenizer(max_length, tuple(words))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return random_text_encoder(tokenizer, hidden, layers, 4, 2 * hidden, max_length)


def build_tiny_unet(
    sample_size: int = 16,
    block_out_channels: tuple[int, ...] = (32, 64),
    cross_attention_dim: int = 32,
    in_channels: int = 4,
    init_seed: int = 0,
    attention_head_dim: int = 4,  # diffusers reads this as the number of heads
) -> UNet2DConditionModel:
    """A random UNet2DConditionModel with SD's block layout at a tiny width (model/unet=tiny)."""
    n = len(block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=in_channels,
            out_channels=in_channels,
            layers_per_block=1,
            block_out_channels=tuple(block_out_channels),
            down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            norm_num_groups=8,
        )


def build_tiny_vae(
    block_out_channels: tuple[int, ...] = (16, 32),
    latent_channels: int = 4,
    sample_size: int = 32,
    init_seed: int = 0,
) -> AutoencoderKL:
    """A random AutoencoderKL; downsampling factor 2**(len(block_out_channels) - 1) (model/vae=tiny)."""
    n = len(block_out_channels)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        return AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=tuple(block_out_channels),
            latent_channels=latent_channels,
            layers_per_block=1,
            norm_num_groups=8,
            sample_size=sample_size,
        )


def build_tiny_sd(  # noqa: PLR0913 - one keyword per size setting of the tiny model (tests, benches)
    sample_size: int = 16,
    block_out_channels: tuple[int, ...] = (32, 64),
    vae_channels: tuple[int, ...] = (16, 32),
    text_hidden: int = 32,
    text_layers: int = 2,
    max_length: int = 32,
    prediction_type: str = "epsilon",
    init_seed: int = 0,
    words: tuple[str, ...] = DEFAULT_WORDS,
) -> SDParts:
    """Tiny random SD parts in one call (tests and benchmarks; runs compose the same parts from the
    model/* config groups). Image size = sample_size * 2**(len(vae_channels)-1) (32 px by default)."""
    factor = 2 ** (len(vae_channels) - 1)
    ident = json.dumps(
        [
            sample_size,
            list(block_out_channels),
            list(vae_channels),
            text_hidden,
            text_layers,
            max_length,
            prediction_type,
            init_seed,
            list(words),
        ]
    )
    return SDParts(
        unet=build_tiny_unet(sample_size, tuple(block_out_channels), text_hidden, 4, init_seed),
        text_encoder=build_tiny_text_encoder(text_hidden, text_layers, max_length, tuple(words), init_seed),
        tokenizer=build_tiny_tokenizer(max_length, tuple(words)),
        vae=build_tiny_vae(tuple(vae_channels), 4, sample_size * factor, init_seed),
        noise_scheduler=sd_noise_scheduler(prediction_type),
        sample_scheduler=ddim_sampler(prediction_type),
        model_id="tiny-random:" + hashlib.sha256(ident.encode()).hexdigest()[:12],
        is_tiny_random=True,
    )
