"""DreamBooth pairs: each item holds one instance (reference) image and, with prior preservation, one
class image; the collate puts all instance examples first, then all prior examples (METHOD.md)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from spurgen.data.images import load_rgb, warn_if_small
from spurgen.data.transforms import train_transform


def load_training_images(paths: list[Path], resolution: int, center_crop: bool = True) -> torch.Tensor:
    """(N, 3, R, R) in [0, 1]; small images are upscaled with a warning."""
    out = []
    for p in paths:
        im = load_rgb(p)
        warn_if_small(im, resolution, p)
        out.append(train_transform(im, resolution, center_crop))
    return torch.stack(out)


def tokenize(tokenizer, prompt: str) -> torch.Tensor:
    ids = tokenizer(
        prompt,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    return ids[0]  # (L,)


class DreamBoothDataset(Dataset):
    def __init__(
        self,
        instance_images: torch.Tensor,  # (N, 3, R, R) in [0, 1]
        instance_ids: torch.Tensor,  # (L,)
        class_paths: list[Path],
        class_ids: torch.Tensor | None,
        resolution: int,
        center_crop: bool = True,
    ):
        self.instance_images, self.instance_ids = instance_images, instance_ids
        self.class_paths, self.class_ids = list(class_paths), class_ids
        self.resolution, self.center_crop = resolution, center_crop

    @property
    def with_prior(self) -> bool:
        return len(self.class_paths) > 0

    def __len__(self) -> int:
        return max(len(self.instance_images), len(self.class_paths))

    def __getitem__(self, i: int) -> dict:
        k = i % len(self.instance_images)
        item = {
            "instance": self.instance_images[k] * 2 - 1,
            "instance_ids": self.instance_ids,
            "pair": k,
            "instance_key": f"instance/{k}",  # the same pixels every time it comes back (no random transform)
        }
        if self.with_prior:
            j = i % len(self.class_paths)
            item["class"] = (
                train_transform(load_rgb(self.class_paths[j]), self.resolution, self.center_crop) * 2 - 1
            )
            item["class_ids"] = self.class_ids
            item["class_key"] = f"class/{j}"
        return item


def collate(items: list[dict]) -> dict:
    """pixel_values (B, 3, R, R) in [-1, 1], input_ids (B, L): instance half first. `keys` (when the items
    carry them) name each row's image, for the latent cache (SpurgenModule, train.cache_latents)."""
    pixels = [it["instance"] for it in items]
    ids = [it["instance_ids"] for it in items]
    keys = [it.get("instance_key") for it in items]
    if "class" in items[0]:
        pixels += [it["class"] for it in items]
        ids += [it["class_ids"] for it in items]
        keys += [it.get("class_key") for it in items]
    out = {
        "pixel_values": torch.stack(pixels),
        "input_ids": torch.stack(ids),
        "n_instance": len(items),
        "pair_index": torch.tensor([it["pair"] for it in items]),
    }
    if all(k is not None for k in keys):
        out["keys"] = keys
    return out


class StepBatchSampler(torch.utils.data.Sampler[list[int]]):
    """Endless batches where batch number b depends only on (seed, b): epoch e = b // batches_per_epoch
    is a permutation seeded by (seed, e). A resumed run starts at `start()` (the batches already seen)
    and sees exactly the batches an uninterrupted run would have."""

    def __init__(self, n_items: int, batch_size: int, seed: int, start=lambda: 0):
        self.n, self.bs, self.seed, self.start = n_items, batch_size, seed, start
        self.per_epoch = max(1, -(-n_items // batch_size))

    def batch(self, b: int) -> list[int]:
        epoch, pos = divmod(b, self.per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + epoch))
        return perm[pos * self.bs : (pos + 1) * self.bs].tolist()

    def __iter__(self):
        b = int(self.start())
        while True:
            yield self.batch(b)
            b += 1
