"""Draw the packaged demo reference images (spurgen/assets/demo_references): red flowers on leaves.

They only exist so that the tiny model (`python -m spurgen.run experiment=tiny`) runs with no data;
they are not Spurious ImageNet images.
    python experiments/make_demo_references.py
"""

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

OUT = Path(__file__).resolve().parents[1] / "spurgen" / "assets" / "demo_references"


def flower_image(seed: int, size: int = 64) -> Image.Image:
    rng = random.Random(seed)
    im = Image.new("RGB", (size, size), (40 + rng.randint(0, 30), 110 + rng.randint(0, 40), 45))
    d = ImageDraw.Draw(im)
    for _ in range(12):  # leaves
        x, y = rng.randint(0, size), rng.randint(0, size)
        d.ellipse([x - 8, y - 3, x + 8, y + 3], fill=(30, 90 + rng.randint(0, 60), 30))
    for _ in range(rng.randint(2, 4)):  # red flowers
        cx, cy, r = rng.randint(10, size - 10), rng.randint(10, size - 10), rng.randint(5, 9)
        for k in range(6):
            a = 2 * math.pi * k / 6 + rng.random()
            px, py = cx + r * math.cos(a), cy + r * math.sin(a)
            d.ellipse(
                [px - r / 1.6, py - r / 1.6, px + r / 1.6, py + r / 1.6],
                fill=(200 + rng.randint(0, 55), 20, 30),
            )
        d.ellipse([cx - 2, cy - 2, cx + 2, cy + 2], fill=(250, 210, 60))
    return im.filter(ImageFilter.SMOOTH)


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for i in range(6):
        flower_image(i).save(OUT / f"demo_flowers_{i}.png")
    (OUT / "README.txt").write_text(
        "Synthetic demo references drawn by experiments/make_demo_references.py (red flowers on leaves).\n"
        "They let the tiny random model (model=tiny) run offline; they are not Spurious ImageNet images.\n"
    )
    print(f"wrote 6 images to {OUT}")
