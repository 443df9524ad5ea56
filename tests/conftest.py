"""Shared fixtures: everything offline, tiny and fast."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # before torch/diffusers/transformers pull in huggingface_hub

import pytest  # noqa: E402
import torch  # noqa: E402

# huggingface_hub reads HF_HUB_OFFLINE when it is first imported: set it before anything imports it.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("WANDB_MODE", "offline")
torch.set_num_threads(min(2, os.cpu_count() or 1))
REPO = Path(__file__).resolve().parents[1]


def _register_schema() -> None:
    """Tests compose with Hydra's compose API too: the typed schema and resolvers must be registered."""
    from spurgen.config import register_configs, register_resolvers

    register_configs()
    register_resolvers()


_register_schema()


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path_factory):
    """Tests never touch the network; W&B offline; caches in a per-session temp folder."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("SPURGEN_CACHE", str(tmp_path_factory.getbasetemp() / "spurgen-cache"))


@pytest.fixture(scope="session")
def tiny_parts_factory():
    from spurgen.models.tiny import build_tiny_sd

    return build_tiny_sd


@pytest.fixture
def tiny_parts():
    from spurgen.models.tiny import build_tiny_sd

    return build_tiny_sd()


@pytest.fixture
def tiny_extractor():
    from spurgen.models.extractors import build_tiny_extractor

    return build_tiny_extractor()


def write_images(folder: Path, n: int, size: int = 40, seed: int = 0, fmt: str = "png") -> list[Path]:
    """Write n random RGB images; returns their paths."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        arr = (rng.random((size, size, 3)) * 255).astype("uint8")
        p = folder / f"img_{i:03d}.{fmt}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


@pytest.fixture
def image_folder(tmp_path) -> Path:
    write_images(tmp_path / "refs", 4)
    return tmp_path / "refs"


def run_cli(argv: list[str]) -> int:
    from spurgen.run import main

    return main(argv)


def _run_key(overrides: tuple[str, ...]) -> str:
    """What a trained run depends on: its overrides, spurgen's code and config, and the shipped weights."""
    import hashlib

    digest = hashlib.sha256("\0".join(overrides).encode())
    for folder, pattern in ((REPO / "spurgen", "*.py"), (REPO / "conf", "*.yaml")):
        for path in sorted(folder.rglob(pattern)):
            digest.update(path.relative_to(REPO).as_posix().encode() + path.read_bytes())
    digest.update((REPO / "spurgen" / "assets" / "mini" / "manifest.json").read_bytes())
    return digest.hexdigest()[:16]


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """`trained_run(*overrides) -> run folder`: `python -m spurgen.run <overrides>`, trained once per session
    for each set of overrides and shared by every test that asks for it (the mini world's runs take minutes).
    With SPURGEN_TEST_RUNS=<folder> the runs are kept there across sessions, keyed by the overrides, spurgen's
    code and config and the shipped weights, so a change to any of them trains afresh. The run's stdout is in
    <run>/stdout.txt."""
    import contextlib
    import io
    import shutil

    kept = os.environ.get("SPURGEN_TEST_RUNS")
    root = Path(kept) if kept else tmp_path_factory.mktemp("runs")
    made: dict[tuple[str, ...], Path] = {}

    def get(*overrides: str) -> Path:
        if overrides not in made:
            run = root / _run_key(overrides)
            if not (run / "stdout.txt").is_file():  # written last: a run cut short is trained again
                shutil.rmtree(run, ignore_errors=True)
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    code = run_cli([*overrides, f"hydra.run.dir={run}"])
                assert code == 0, out.getvalue()[-3000:]
                (run / "stdout.txt").write_text(out.getvalue())
            made[overrides] = run
        return made[overrides]

    return get


FAST = [
    "trainer.max_steps=2",
    "trainer.enable_progress_bar=false",
    "train.sample_every_n_steps=0",
    "train.num_samples=1",
    "train.checkpoint_every_n_steps=0",
    "data.num_class_images=2",
    "data.num_references=2",
    "logger=none",
]


@pytest.fixture(autouse=True)
def _threads_unchanged():
    """A test must leave torch's thread count as it found it: in-process runs are compared bit for bit with
    subprocess runs (tests/test_reliability.py), and a different count changes float sums."""
    before = torch.get_num_threads()
    yield
    after = torch.get_num_threads()
    torch.set_num_threads(before)
    assert after == before, f"the test left torch.get_num_threads() at {after} (was {before})"
