"""`spurgen export`: the images predicted as the target by at least m classifiers, with a manifest."""

from __future__ import annotations

import json

from spurgen.cli.export import main
from tests.test_evaluate import TINY, make_generated, tiny_classifiers


def test_export_copies_images_voted_by_at_least_m_classifiers(tmp_path, capsys):
    from spurgen.eval.predict import predict_set

    images = make_generated(tmp_path / "generated", n=5)
    paths = sorted(images.glob("*.png"))
    models = tiny_classifiers()
    first = predict_set(models, paths, target=0).per_classifier[TINY[0]]
    target = int(first.argmax[0])  # a class the first tiny classifier predicts for image 0
    preds = predict_set(models, paths, target=target).per_classifier
    votes = [sum(int(preds[c].argmax[i]) == target for c in TINY) for i in range(len(paths))]

    out = tmp_path / "dataset"
    h = f"hydra.run.dir={tmp_path}/h"
    argv = [
        f"images_dir={images}",
        "eval=tiny",
        "class=imagenet",
        f"target.index={target}",
        f"out_dir={out}",
        h,
    ]
    assert main([*argv, "min_classifiers=1"]) == 0
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    expected = [p.name for p, v in zip(paths, votes, strict=True) if v >= 1]
    assert [r["file"] for r in recs] == [f"images/{n}" for n in expected] and "img_000.png" in expected
    assert sorted(p.name for p in (out / "images").iterdir()) == expected
    r = recs[0]
    assert r["seed"] == 0 and r["prompt"] == "a photo of a sks flower" and r["votes"] == votes[0]
    assert set(r["classifiers"]) == set(TINY)
    assert (
        r["classifiers"][TINY[0]]["prediction"] == target and 0 < r["classifiers"][TINY[0]]["p_target"] <= 1
    )
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["num_exported"] == len(expected) and meta["model_is_tiny_random"] is True
    assert (
        meta["model_marks"] == {}
    )  # the tiny model declares none; the mini world its own (docs/mini_world.md)

    # again into the same folder with a stricter vote: the images it no longer chooses go, a file of the
    # user's stays, and the folder holds what the manifest lists
    (out / "images" / "notes.txt").write_text("mine")
    assert main([*argv, "min_classifiers=2"]) == 0
    again = [json.loads(line)["file"] for line in (out / "manifest.jsonl").read_text().splitlines()]
    kept = [p.name for p, v in zip(paths, votes, strict=True) if v >= 2]
    assert again == [f"images/{n}" for n in kept] and len(kept) < len(expected)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted([*kept, "notes.txt"])

    out3 = tmp_path / "dataset3"
    assert main([*argv[:-2], f"out_dir={out3}", h, "min_classifiers=3"]) == 0
    assert json.loads((out3 / "dataset.json").read_text())["num_exported"] == sum(v == 3 for v in votes)
    capsys.readouterr()
    assert main([*argv, "min_classifiers=4"]) == 2
    err = capsys.readouterr().err
    assert "spurgen: error: min_classifiers must be in 1..3" in err and "Traceback" not in err
    assert main([h]) == 2  # images_dir is ??? until given
    err = capsys.readouterr().err
    assert (
        err.strip() == "spurgen: error: images_dir is required: give images_dir=<value> on the command line"
    )
