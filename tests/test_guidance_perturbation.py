"""experiments/guidance_perturbation.py: the distance of each guided image to its unguided twin, by hand."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from PIL import Image

from experiments.guidance_perturbation import main, run_distances, twin_distance


def save(path, pixels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(path)


def test_twin_distance_by_hand(tmp_path):
    a = np.zeros((4, 4, 3))
    b = a.copy()
    b[0, 0, 0] = 51  # one value of 48 off by 0.2: MSE 0.04 / 48
    save(tmp_path / "a.png", a), save(tmp_path / "b.png", b)
    psnr, largest = twin_distance(tmp_path / "a.png", tmp_path / "b.png")
    assert psnr == pytest.approx(10 * np.log10(48 / 0.04)) and largest == pytest.approx(51)
    assert twin_distance(tmp_path / "a.png", tmp_path / "a.png") == (100.0, 0.0)


def test_a_guidance_run_and_not_others(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for name, guidance in (("g", {"strength": 3.0}), ("plain", None)):
        run = sweep / name
        (run / ".hydra").mkdir(parents=True)
        cfg = {
            "seed": 1,
            "target": {"file": "nematode"},
            "method": {"name": "guidance", "guidance": guidance},
        }
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        for i, shift in enumerate((0, 255)):  # image 1 differs everywhere by 255: PSNR 0 dB
            save(run / "generated" / f"{i:05d}.png", np.full((2, 2, 3), shift))
            save(run / "baseline" / f"{i:05d}.png", np.zeros((2, 2, 3)))
    r = run_distances(sweep / "g")
    assert (r["class_file"], r["strength"], r["seed"], r["images"]) == ("nematode", 3.0, 1, 2)
    assert r["psnr_db_median"] == pytest.approx(50.0) and r["max_abs_diff_median"] == pytest.approx(127.5)
    assert run_distances(sweep / "plain") is None
    assert main([str(sweep), "--out", str(tmp_path / "p.json")]) == 0
    assert "nematode guidance s=3.0" in capsys.readouterr().out and (tmp_path / "p.json").is_file()
    assert main([str(tmp_path / "absent")]) == 2
