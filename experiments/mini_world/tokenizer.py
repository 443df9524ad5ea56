"""The mini world's CLIP BPE tokenizer: a vocabulary of about 600 tokens instead of CLIP's 49,408.

It is a real byte-level CLIP BPE (vocab.json + merges.txt, loaded by `CLIPTokenizer.from_pretrained`):
- the 256 byte symbols, so every text tokenizes;
- end-of-word forms (`x</w>`) of the 94 printable ASCII symbols; a word that ends in another byte (accented
  letters, emoji) ends in the unknown token, which is CLIP's `<|endoftext|>`;
- merges that make each word of `WORDS` one token: the corpus captions, spurgen's prompt words, the
  identifier "sks", the recontextualisation templates and common words. Other words fall back to pieces.
The merges are built word by word: a new word is first split by the merges already made (an exact replay
of CLIP's BPE), then its pieces are merged left to right. New merges rank after all earlier ones, so they
never change how an earlier word splits (each earlier word always has a lower-ranked pair left until it is
one token).
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import CLIPTokenizer

from experiments.mini_world import corpus
from spurgen.models.tiny import BOS, EOS, _bytes_to_unicode

MAX_LENGTH = 32  # tokens per prompt, BOS and EOS included; the text encoder's positions
END = "</w>"

# The words that must be one token each. Order matters only for which merges exist (not for ids' meaning).
PROMPT_WORDS = ("a", "photo", "of", "sks", "on", "the", "beach", "mount", "fuji", "in", "garden", "market")
CLASS_WORDS = (  # spurgen's class files (concepts, names, synonyms) and the mini world's reference class
    "flower", "feeder", "bird", "hummingbird", "graffiti", "freight", "car", "train", "label", "hard",
    "disc", "disk", "drive", "koala", "bear", "eucalyptus", "butterfly", "sulphur", "fountain", "boat",
    "fire", "ship", "nematode", "worm", "moon",
)  # fmt: skip
COMMON_WORDS = (
    "an", "and", "with", "at", "by", "to", "is", "picture", "image", "close", "up", "view", "small",
    "large", "red", "green", "blue", "white", "black", "grey", "dark", "light", "old", "new", "street",
    "city", "water", "sky", "sea", "snow", "forest", "field", "room", "table", "background",
)  # fmt: skip


def corpus_words() -> tuple[str, ...]:
    """Every word of every corpus caption (train, held-out and reference photos; the autoencoder's photos
    are never captioned)."""
    words = (w for p in corpus.captioned_photos() for w in corpus.caption(p.subject).split())
    return tuple(dict.fromkeys(words))


WORDS = tuple(dict.fromkeys(PROMPT_WORDS + corpus_words() + CLASS_WORDS + COMMON_WORDS))


def base_symbols() -> list[str]:
    """The byte alphabet (256 symbols), then the end-of-word forms of printable ASCII (94)."""
    alphabet = list(_bytes_to_unicode().values())
    return alphabet + [chr(c) + END for c in range(ord("!"), ord("~") + 1)]


def bpe(word: str, ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE on one lower-case ASCII word: repeatedly merge the lowest-ranked adjacent pair."""
    parts = list(word[:-1]) + [word[-1] + END]
    while len(parts) > 1:
        pairs = [(ranks.get((a, b)), i) for i, (a, b) in enumerate(zip(parts, parts[1:], strict=False))]
        ranked = [(r, i) for r, i in pairs if r is not None]
        if not ranked:
            break
        rank = min(r for r, _ in ranked)
        pair = next((parts[i], parts[i + 1]) for r, i in ranked if r == rank)
        merged, i = [], 0
        while i < len(parts):  # merge every occurrence of the pair, left to right, as CLIP does
            if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                merged.append(pair[0] + pair[1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def build_merges(words: tuple[str, ...] = WORDS) -> list[tuple[str, str]]:
    """Merges that make each of `words` one token, reusing the pieces earlier words made."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = bpe(word, ranks)
        current = pieces[0]
        for piece in pieces[1:]:
            ranks[(current, piece)] = len(merges)
            merges.append((current, piece))
            current += piece
    return merges


def write_tokenizer_files(folder: Path, words: tuple[str, ...] = WORDS) -> Path:
    """Write vocab.json + merges.txt (+ the special tokens) for the mini tokenizer into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    merges = build_merges(words)
    vocab = base_symbols() + [a + b for a, b in merges] + [BOS, EOS]
    if len(set(vocab)) != len(vocab):
        raise ValueError("mini tokenizer: a merge repeats a symbol")  # a bug in build_merges, not user input
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def build_mini_tokenizer(folder: Path, max_length: int = MAX_LENGTH) -> CLIPTokenizer:
    """Write the files into `folder` and load them; the result saves with save_pretrained as usual."""
    # transformers 5 ignores vocab_file/merges_file passed to the constructor (ENVIRONMENT.md):
    # from_pretrained on a folder is the path that works.
    tok = CLIPTokenizer.from_pretrained(
        write_tokenizer_files(Path(folder)), model_max_length=max_length, pad_token=EOS
    )
    return tok
