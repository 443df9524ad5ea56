"""Sweeps, launchers, DDP and the sweep report (issue 4)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spurgen.config import METHOD_VERSION
from tests.conftest import FAST, REPO, run_cli
from tests.helpers import TINY

TINY_GEN = ["generate.num_images=4", "stages=[train,generate,evaluate]"]


# -- fast: the report on a hand-made sweep folder ------------------------------------------------------------
def _block(rate: float, sim: float = 0.5, n: int = 10, **extra: float) -> dict:
    """One image set's numbers for classifiers a and b; extra: kid=..., diversity=... (metrics.json blocks)."""
    spurious = {"value": rate, "n": n, "count": round(rate * n)}
    per = {c: {"spurious_rate": spurious, "similarity": {"value": sim}} for c in ("a", "b")}
    for c in per:
        per[c].update({k: {"value": v, "n": n} for k, v in extra.items()})
    return {"per_classifier": per, "consistency": {"all": {"value": rate}, "at_least_half": {"value": rate}}}


def _fake_run(root: Path, lam: float, seed: int, rate: float, **opts) -> None:
    """A run folder `lambda_sfsl=<lam>,seed=<seed>`; opts: version ("1"), metrics (True | False | "broken"),
    baseline (False), sim (0.5: the images' similarity), extra ({}: the images' kid / diversity), memorisation
    ({}: metrics.json's memorisation block)."""
    version, metrics, baseline = (
        opts.get("version", "1"),
        opts.get("metrics", True),
        opts.get("baseline", False),
    )
    run = root / f"lambda_sfsl={lam:g},seed={seed}"
    (run / ".hydra").mkdir(parents=True)
    cfg = {"target": {"name": "koala", "index": 105}, "lambda_sfsl": lam, "seed": seed}
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"lambda_sfsl={lam:g}", f"seed={seed}"]))
    if metrics is True:
        results = {
            "images": _block(rate, opts.get("sim", 0.5), **opts.get("extra", {})),
            "reference": _block(0.9, 1.0),
        }
        if baseline:
            results["baseline"] = _block(0.05)
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text(
            json.dumps(
                {
                    "method_version": version,
                    "model_is_tiny_random": False,
                    "target": {"index": 105, "name": "koala"},
                    "results": results,
                    "sets": {},
                    "memorisation": opts.get("memorisation", {}),
                }
            )
        )
    elif metrics == "broken":
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text("{not json")


@pytest.fixture
def fake_sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    _fake_run(root, 0, 0, 0.2, baseline=True)
    _fake_run(root, 0, 1, 0.4, baseline=True)
    _fake_run(root, 1, 0, 0.6)
    _fake_run(root, 1, 1, 0.0, metrics="broken")
    _fake_run(root, 1, 2, 0.0, metrics=False)
    _fake_run(root, 0, 2, 0.9, version="2")
    multirun = {
        "hydra": {"sweeper": {"params": {"lambda_sfsl": "0,1", "seed": "0,1,2,3"}}, "overrides": {"task": []}}
    }
    (root / "multirun.yaml").write_text(yaml.safe_dump(multirun))
    return root


def test_rows_pool_the_seeds_images_into_one_wilson_interval(fake_sweep):
    """lambda 0, version 1: seeds 0 and 1 with 2 and 4 of 10 images -> 6 of 20, Wilson's interval of 6/20."""
    from spurgen.eval.metrics import wilson_interval
    from spurgen.report import aggregate, collect

    rows = aggregate(collect(fake_sweep))
    row = next(
        r for r in rows if r["row"] == "images" and r["lambda_sfsl"] == 0 and r["method_version"] == "1"
    )
    pooled = row["pooled"]["a"]
    assert (pooled["count"], pooled["n"]) == (6, 20) and pooled["rate"] == pytest.approx(0.3)
    assert pooled["ci"] == pytest.approx(list(wilson_interval(6, 20)))
    assert row["stats"]["spurious_rate/a"]["mean"] == pytest.approx(0.3)  # the seeds' mean, beside it


def test_pooled_spread_and_judge_by_hand():
    """s_p = sqrt((s0² + s1²) / 2): 0.3 and 0.4 -> sqrt(0.125); shown only above it; one seed: n/a."""
    from spurgen.report.effects import judge, pooled_spread

    assert pooled_spread(0.3, 0.4) == pytest.approx(math.sqrt(0.125))
    assert pooled_spread(None, 0.4) is None and pooled_spread(0.3, None) is None
    base = {"mean": 0.2, "std": 0.3, "n": 3}
    above = judge(base, {"mean": 0.6, "std": 0.4, "n": 3})  # 0.4 > 0.354
    assert above["verdict"] == "shown" and above["difference"] == pytest.approx(0.4)
    assert judge(base, {"mean": 0.5, "std": 0.4, "n": 3})["verdict"] == "not shown"  # 0.3 <= 0.354
    assert judge(base, {"mean": 0.0, "std": 0.0, "n": 3})["verdict"] == "not shown"  # a fall
    assert judge(base, {"mean": 0.9, "std": None, "n": 1})["verdict"] == "n/a (one seed)"
    assert judge(None, {"mean": 0.9, "std": 0.1, "n": 2})["verdict"] == "n/a (not measured)"


@pytest.fixture
def effect_sweep(tmp_path) -> Path:
    """lambda_sfsl 0 / 0.1 / 1 x seeds 0, 1 and lambda_sfsl 2 with seed 0 only; rates and similarities chosen so
    that each verdict occurs (test_report_says_per_classifier_and_lambda_whether_the_effect_is_shown)."""
    root = tmp_path / "effects"
    plan = {  # lambda: [(rate, similarity) per seed]
        0: [(0.2, 0.50), (0.4, 0.52)],
        0.1: [(0.3, 0.60), (0.5, 0.62)],
        1: [(0.7, 0.40), (0.9, 0.42)],
        2: [(0.9, 0.70)],
    }
    for lam, per_seed in plan.items():
        for seed, (rate, sim) in enumerate(per_seed):
            extra = {"kid": 0.01 * (seed + 1), "diversity": 0.3 + 0.1 * lam}
            _fake_run(root, lam, seed, rate, sim=sim, extra=extra, baseline=lam == 0)
    return root


def test_report_says_per_classifier_and_lambda_whether_the_effect_is_shown(effect_sweep):
    """lambda 0: rate 0.3 ± 0.141, similarity 0.51 ± 0.014. lambda 0.1: rate +0.1 against a spread of 0.141
    (not shown), similarity +0.1 against 0.014 (shown); lambda 1: rate +0.5 (shown), similarity -0.1 (not
    shown); lambda 2: one seed (n/a). Every line is listed, for both classifiers."""
    from spurgen.report import write_report
    from spurgen.report.aggregate import aggregate
    from spurgen.report.collect import collect
    from spurgen.report.effects import effects

    found = effects(aggregate(collect(effect_sweep)))
    verdicts = {(e["lambda_sfsl"], e["classifier"], e["metric"]): e["verdict"] for e in found}
    for c in ("a", "b"):
        assert verdicts[(0.1, c, "spurious_rate")] == "not shown"
        assert verdicts[(0.1, c, "similarity")] == "shown"
        assert verdicts[(1.0, c, "spurious_rate")] == "shown"
        assert verdicts[(1.0, c, "similarity")] == "not shown"
        assert verdicts[(2.0, c, "spurious_rate")] == verdicts[(2.0, c, "similarity")] == "n/a (one seed)"
    assert len(found) == 3 * 2 * 2  # lambdas > 0 x classifiers x metrics: none dropped
    one = next(
        e for e in found if (e["lambda_sfsl"], e["classifier"], e["metric"]) == (1.0, "a", "spurious_rate")
    )
    assert one["difference"] == pytest.approx(0.5) and one["spread"] == pytest.approx(math.sqrt(0.02))
    # aggregate.py's pooled Wilson interval: 2 + 4 and 7 + 9 of 20 images
    assert (one["pooled_0"]["count"], one["pooled_0"]["n"]) == (6, 20)
    assert (one["pooled"]["count"], one["pooled"]["n"]) == (16, 20)

    write_report(effect_sweep)
    md = (effect_sweep / "report.md").read_text()
    assert "pooled seed spread sqrt((s0² + s1²) / 2)" in md  # the rule, defined in the text
    from spurgen.eval.metrics import wilson_interval

    lo0, hi0 = wilson_interval(6, 20)
    lo1, hi1 = wilson_interval(16, 20)
    line = f"| 1 | a | 0.300 [{lo0:.3f}, {hi0:.3f}] → 0.800 [{lo1:.3f}, {hi1:.3f}] | +0.500 / 0.141 | shown |"
    assert line in md
    assert "| 0.1 | b |" in md and "| 2 | a |" in md and md.count("| n/a (one seed) |") == 4
    assert "KID a" in md and "diversity b" in md
    assert (effect_sweep / "figures" / "measures_105_v1.png").exists()
    assert "![similarity, KID and diversity vs lambda_sfsl](figures/measures_105_v1.png)" in md
    lines = list(__import__("csv").DictReader(open(effect_sweep / "effects.csv")))
    assert len(lines) == 12 and {ln["verdict"] for ln in lines} == {"shown", "not shown", "n/a (one seed)"}
    rate_line = next(ln for ln in lines if ln["lambda_sfsl"] == "1.0" and ln["classifier"] == "a"
                     and ln["metric"] == "spurious_rate")  # fmt: skip
    assert float(rate_line["pooled_ci_low_0"]) == pytest.approx(lo0)
    rows = list(__import__("csv").DictReader(open(effect_sweep / "report.csv")))
    kid = next(r for r in rows if r["metric"] == "kid/a" and r["lambda_sfsl"] == "0.0")
    assert float(kid["mean"]) == pytest.approx(0.015) and kid["n_seeds"] == "2"
    div = next(r for r in rows if r["metric"] == "diversity/b" and r["lambda_sfsl"] == "1.0")
    assert float(div["mean"]) == pytest.approx(0.4)


def test_effects_compare_only_rows_of_one_identity(tmp_path):
    """Extractor A: lambda_sfsl 0 and 1; extractor B (another identity): lambda_sfsl 1 only. B's row is never
    compared with A's lambda_sfsl = 0 row: its verdict says it has none."""
    from spurgen.report.aggregate import aggregate
    from spurgen.report.collect import collect
    from spurgen.report.effects import effects

    root = tmp_path / "two"
    for ext, lam, seed in (("A", 0, 0), ("A", 0, 1), ("A", 1, 0), ("A", 1, 1), ("B", 1, 0), ("B", 1, 1)):
        _mixed_run(root, ext, 300, "hummingbird", lam, seed)
    found = effects(aggregate(collect(root)))
    by_table = {}
    for e in found:
        by_table.setdefault(e["identity"], set()).add(e["verdict"])
    assert len(by_table) == 2
    none = "n/a (no lambda_sfsl = 0 row)"
    own, other = sorted(by_table.values(), key=lambda v: none in v)
    assert own == {"shown", "not shown"} and other == {none}  # A: rate +0.1 shown, similarity equal


def test_report_lists_broken_and_missing_runs_and_separates_versions(fake_sweep):
    from spurgen.cli.report import main

    assert main([str(fake_sweep)]) == 0
    md = (fake_sweep / "report.md").read_text()
    problems = md.split("## Missing or failed runs")[1]
    assert "lambda_sfsl=1,seed=1" in problems and "unreadable eval/metrics.json" in problems
    assert "lambda_sfsl=1,seed=2" in problems and "no eval/metrics.json" in problems
    assert "lambda_sfsl=0,seed=3" in problems and "never started" in problems  # planned, no folder
    assert "lambda_sfsl=1,seed=3" in problems
    assert "Method versions differ" in md and "## Method version 2" in md
    rows = list(__import__("csv").DictReader(open(fake_sweep / "report.csv")))
    lam0 = [
        r
        for r in rows
        if r["method_version"] == "1"
        and r["row"] == "images"
        and r["lambda_sfsl"] == "0.0"
        and r["metric"] == "spurious_rate/a"
    ]
    assert len(lam0) == 1 and float(lam0[0]["mean"]) == pytest.approx(0.3) and lam0[0]["n_seeds"] == "2"
    assert float(lam0[0]["std"]) == pytest.approx(0.1414, abs=1e-3)  # seed 2 (version 2) not averaged in
    base = [r for r in rows if r["row"] == "baseline" and r["metric"] == "spurious_rate/a"]
    assert len(base) == 1 and base[0]["n_seeds"] == "2"
    assert (fake_sweep / "figures" / "spurious_rate_vs_lambda_v1.png").exists()


def test_report_pushes_table_and_figures_to_wandb_offline(fake_sweep, monkeypatch):
    from spurgen.cli.report import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    assert main([str(fake_sweep), "--wandb"]) == 0
    runs = list((fake_sweep / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    files = {p.name for p in runs[0].rglob("*")}
    assert any(f.endswith(".wandb") for f in files)
    assert any(f.endswith(".png") for f in files) and any(f.endswith(".table.json") for f in files), files


def test_report_bad_input_one_line_exit_2(tmp_path, capsys):
    from spurgen.cli.report import main

    assert main([str(tmp_path / "nope")]) == 2
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("spurgen: error:") == 2 and "Traceback" not in err and "holds no runs" in err


def _mixed_run(root: Path, ext: str, t_max: int, file: str, lam: float, seed: int) -> float:
    """A fake run of the mixed sweep with a saved config as Hydra writes it (interpolations unresolved);
    returns its spurious rate, distinct for every (extractor, t_max, class file, lambda_sfsl)."""
    rate = {"A": 0.1, "B": 0.3}[ext] + {300: 0.0, 500: 0.05}[t_max] + {"hummingbird": 0.0}.get(file, 0.4)
    rate += 0.1 * lam + 0.01 * seed
    run = root / f"ext={ext},t_max={t_max},class={file},lambda_sfsl={lam:g},seed={seed}"
    (run / ".hydra").mkdir(parents=True)
    concept = "flower" if file == "hummingbird" else "feeder"
    cfg = {
        "target": {"index": 94, "file": file, "name": "hummingbird", "component": None, "concept": concept},
        "feature_extractor": {"_target_": f"extractors.{ext}", "layer": "pool"},
        "loss": {"lambda_sfsl": "${lambda_sfsl}", "sfsl": {"t_max": t_max}},
        "data": {"class_prompt": "a photo of a ${target.concept}", "num_workers": seed},
        "generate": {"seed": "${seed}", "baseline": "${spurgen_eq:${lambda_sfsl},0}", "num_images": 4},
        "model": {"path": "sd15"},
        "eval": {"crop": "none", "seed": "${seed}"},
        "lambda_sfsl": lam,
        "seed": seed,
        "run_dir": "${hydra:runtime.output_dir}",
    }
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    results = {"images": _block(rate), "reference": _block(0.9, 1.0)}
    if lam == 0:  # the baseline depends on the class file (its prompt) and the seed only
        results["baseline"] = _block({"hummingbird": 0.05}.get(file, 0.15) + 0.01 * seed)
    metrics = {"method_version": "2", "target": {"index": 94, "name": "hummingbird"}, "results": results}
    extractor = {"name": f"ext_{ext}", "arch": "ResNet", "layer": "pool", "is_random": ext == "B"}
    metrics["extractor"] = {**extractor, "used": lam > 0}
    (run / "eval").mkdir()
    (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return rate


def test_report_never_counts_unlike_runs_as_seeds(tmp_path):
    """Two extractors x two t_max x hummingbird / hummingbird_feeder x lambda_sfsl {0, 1} x seeds {0, 1}:
    eight tables, each averaging exactly its own two seeds."""
    from itertools import product

    from spurgen.report import write_report

    root = tmp_path / "mixed"
    expected = {}
    for ext, t_max, file, lam, seed in product(
        "AB", (300, 500), ("hummingbird", "hummingbird_feeder"), (0, 1), (0, 1)
    ):
        expected.setdefault((ext, t_max, file, lam), []).append(_mixed_run(root, ext, t_max, file, lam, seed))
    write_report(root)
    rows = [
        r for r in __import__("csv").DictReader(open(root / "report.csv")) if r["metric"] == "spurious_rate/a"
    ]
    tuned = [r for r in rows if r["row"] == "images"]
    assert len({(r["identity"], r["class_file"]) for r in tuned}) == 8 and len(tuned) == 16
    assert all(r["n_seeds"] == "2" and r["seeds"] == "0 1" for r in rows)  # never more than the two seeds
    means = sorted(round(float(r["mean"]), 6) for r in tuned)
    assert means == sorted(round(sum(v) / 2, 6) for v in expected.values())  # each table its own runs
    base = {
        (r["identity"], r["class_file"]): (r["row_identity"], float(r["mean"]))
        for r in rows
        if r["row"] == "baseline"
    }
    assert len(base) == 8
    assert len(set(base.values())) == 2  # one baseline per class file, shared by its four tables
    md = (root / "report.md").read_text()
    assert (
        md.count("### hummingbird (94, hummingbird_feeder)") == 4
        and md.count("### hummingbird (94, hummingbird)") == 4
    )
    assert "`feature_extractor._target_=extractors.A`" in md and "`loss.sfsl.t_max=300`" in md
    assert md.count("SFSL trained through: `ext_A` (ResNet, layer pool)\n") == 4  # each table names its own
    assert md.count("SFSL trained through: `ext_B` (ResNet, layer pool, RANDOM weights)\n") == 4
    assert "data.num_workers" not in md and "generate.baseline" not in md  # keys that change nothing
    assert "Repeated runs" not in md
    figures = {p.name for p in (root / "figures").iterdir()}
    assert len([f for f in figures if f.startswith("images_94_")]) == 0  # no images in these fake runs
    assert "spurious_rate_vs_lambda_v2.png" in figures


def test_report_lists_a_second_differing_baseline(tmp_path):
    """Two runs of one seed whose baselines should agree but do not: both are named, one is used."""
    from spurgen.report import write_report

    root = tmp_path / "twice"
    _mixed_run(root, "A", 300, "hummingbird", 0, 0)
    _mixed_run(root, "B", 300, "hummingbird", 0, 0)  # another table, the same baseline identity
    other = next(p for p in root.iterdir() if "ext=B" in p.name) / "eval" / "metrics.json"
    metrics = json.loads(other.read_text())
    metrics["results"]["baseline"] = _block(0.5)
    other.write_text(json.dumps(metrics))
    write_report(root)
    md = (root / "report.md").read_text()
    repeated = md.split("## Repeated runs")[1]
    assert "ext=B" in repeated and "ext=A" in repeated and "other numbers" in repeated
    rows = list(__import__("csv").DictReader(open(root / "report.csv")))
    base = [r for r in rows if r["row"] == "baseline" and r["metric"] == "spurious_rate/a"]
    assert len(base) == 2 and all(r["n_seeds"] == "1" and float(r["mean"]) == 0.05 for r in base)


def test_report_splits_runs_whose_base_weights_differ(tmp_path):
    """One config, seeds 0-3; seeds 2 and 3 started from regenerated weights (the same model.path, so the
    same config identity): two tables of two seeds each, headed by the weights, baselines kept apart. Runs
    of one identity that agree on their weights keep the identity as it is."""
    from spurgen.report import collect, write_report

    root = tmp_path / "regen"
    for seed, rate in enumerate((0.2, 0.4, 0.6, 0.8)):
        _fake_run(root, 0, seed, rate, baseline=True)
        path = root / f"lambda_sfsl=0,seed={seed}" / "eval" / "metrics.json"
        metrics = json.loads(path.read_text())
        metrics["model_weights"] = "manifest:old" if seed < 2 else "manifest:new"
        metrics["results"]["baseline"] = _block(0.1 if seed < 2 else 0.3)
        path.write_text(json.dumps(metrics))
    runs = collect(root).runs
    assert len({r.identity for r in runs}) == 2 and {r.config["model.weights"] for r in runs} == {
        "manifest:old",
        "manifest:new",
    }
    write_report(root)
    rows = [
        r for r in __import__("csv").DictReader(open(root / "report.csv")) if r["metric"] == "spurious_rate/a"
    ]
    tuned = sorted((r["seeds"], round(float(r["mean"]), 6)) for r in rows if r["row"] == "images")
    assert tuned == [("0 1", 0.3), ("2 3", 0.7)]  # never the four seeds' 0.5
    base = sorted((r["seeds"], round(float(r["mean"]), 6)) for r in rows if r["row"] == "baseline")
    assert base == [("0 1", 0.1), ("2 3", 0.3)]
    md = (root / "report.md").read_text()
    assert "`model.weights=manifest:old`" in md and "`model.weights=manifest:new`" in md
    assert "Repeated runs" not in md
    same = tmp_path / "same"  # all four on one set of weights: one identity, untouched
    for seed in range(2):
        _fake_run(same, 0, seed, 0.5)
    plain = {r.identity for r in collect(same).runs}
    assert len(plain) == 1 and "+" not in next(iter(plain))


def test_folder_fingerprint_follows_content_not_copies(tmp_path):
    import shutil

    from spurgen.files import folder_fingerprint

    a = tmp_path / "a"
    (a / "unet").mkdir(parents=True)
    (a / "unet" / "w.safetensors").write_bytes(bytes(range(256)) * 20000)  # 5 MB: head and tail are read
    (a / "model_index.json").write_text("{}")
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert folder_fingerprint(a) == folder_fingerprint(b)
    blob = bytearray((b / "unet" / "w.safetensors").read_bytes())
    blob[-1] ^= 1  # other weights of the same size
    (b / "unet" / "w.safetensors").write_bytes(bytes(blob))
    assert folder_fingerprint(a) != folder_fingerprint(b)
    (a / "manifest.json").write_text('{"files": {}}')  # a manifest speaks for the folder
    assert folder_fingerprint(a).startswith("manifest:")


# -- fast: pieces of the sweep and DDP plumbing ---------------------------------------------------------------
def test_short_dirname_keeps_short_names_and_fits_long_ones():
    from spurgen.sweep import short_dirname

    assert short_dirname("class=koala,lambda_sfsl=0.1") == "class=koala,lambda_sfsl=0.1"
    long = "a.very.long.key=" + "x" * 300 + ",lambda_sfsl=1,class=koala"
    name = short_dirname(long)
    assert (
        len(name) <= 160
        and name.startswith("class=koala,lambda_sfsl=1")
        and name != short_dirname(long + "y")
    )
    # a path value must not nest folders, and two paths that differ only in their slashes stay apart
    slashed = short_dirname("lambda_sfsl=0,model.path=/models/sd15")
    assert "/" not in slashed and slashed.startswith("lambda_sfsl=0,model.path=_models_sd15-")
    assert slashed != short_dirname("lambda_sfsl=0,model.path=_models_sd15")
    assert short_dirname("lambda_sfsl=0,model.path=_models_sd15") == "lambda_sfsl=0,model.path=_models_sd15"


def test_rank_batch_sampler_gives_ranks_disjoint_batches():
    from itertools import islice

    from spurgen.data.dataset import StepBatchSampler
    from spurgen.distributed import RankBatchSampler

    inner = StepBatchSampler(8, 1, seed=0)
    single = list(islice(iter(RankBatchSampler(inner, lambda: (0, 1))), 4))
    r0 = list(islice(iter(RankBatchSampler(inner, lambda: (0, 2))), 2))
    r1 = list(islice(iter(RankBatchSampler(inner, lambda: (1, 2))), 2))
    assert single == [inner.batch(b) for b in range(4)]  # one device: unchanged
    assert [r0[0], r1[0], r0[1], r1[1]] == single  # two ranks split the same global sequence


def test_ablation_grid_and_baseline_switch():
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from spurgen.config import CONF_DIR, register_configs, register_resolvers

    register_configs()
    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("config", ["experiment=ablation_six_classes"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert (
            len(params["class"].split(",")) == 6
            and params.lambda_sfsl == "0,0.01,0.1,1"
            and params.seed == "0,1,2"
        )
        for name in params["class"].split(","):
            assert (Path(CONF_DIR) / "class" / f"{name}.yaml").exists()
        assert (
            compose("config", ["experiment=ablation_six_classes", "lambda_sfsl=0"]).generate.baseline is True
        )
        assert (
            compose("config", ["experiment=ablation_six_classes", "lambda_sfsl=0.1"]).generate.baseline
            is False
        )
        assert OmegaConf.select(cfg, "hydra.sweep.dir").startswith("multirun/ablation_six_classes/")


# -- slow: end to end ----------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tiny_multirun_joblib_then_report(tmp_path):
    """2 classes x 2 lambdas through the joblib launcher (2 processes), then the report: 4 rows, figures."""
    sweep = tmp_path / "sweep"
    argv = [
        "-m",
        "experiment=tiny_lambda_grid",
        "class=hummingbird,koala",
        "lambda_sfsl=0,1",
        "hydra/launcher=local_parallel",
        f"hydra.sweep.dir={sweep}",
        *FAST,
        *TINY_GEN,
    ]
    assert run_cli(argv) == 0
    runs = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(runs) == 4 and all((r / "eval" / "metrics.json").exists() for r in runs)
    assert any(r.name.startswith("class=koala,lambda_sfsl=1") for r in runs)  # named by its overrides
    assert sum((r / "baseline").is_dir() for r in runs) == 2  # once per class, in the lambda_sfsl=0 runs

    from spurgen.cli.report import main

    assert main([str(sweep)]) == 0
    rows = list(__import__("csv").DictReader(open(sweep / "report.csv")))
    tuned = {(r["class_name"], r["lambda_sfsl"]) for r in rows if r["row"] == "images"}
    assert len(tuned) == 4
    assert {r["row"] for r in rows} == {"images", "reference", "baseline"}
    md = (sweep / "report.md").read_text()
    assert "None." in md.split("## Missing or failed runs")[1]
    for run in runs:  # recorded at run time = recomputed by the report from .hydra/config.yaml
        meta = json.loads((run / "run.json").read_text())
        stamped = json.loads((run / "eval" / "metrics.json").read_text())
        assert meta["identity"] == stamped["identity"] and meta["reference_seed"] == 0 and meta["seed"] == 0
        assert (
            stamped["class_file"] == meta["class_file"] == ("koala" if "koala" in run.name else "hummingbird")
        )
        assert meta["identity"]["run"] in {
            r["identity"] for r in rows if r["class_file"] == meta["class_file"]
        }
    figures, v = sweep / "figures", METHOD_VERSION
    assert (figures / f"spurious_rate_vs_lambda_v{v}.png").exists()
    assert (figures / f"images_94_v{v}.png").exists() and (figures / f"images_105_v{v}.png").exists()


@pytest.mark.slow
def test_ddp_two_cpu_ranks_gloo(tmp_path):
    """trainer=ddp with 2 CPU ranks (gloo), started as `python -m spurgen run`: Lightning re-runs the command for
    rank 1 as `python -m spurgen.run` (so this also covers a run started that way); rank 0 alone saves the
    pipeline and runs generate/evaluate; both ranks train."""
    command = ["spurgen", "run"]
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        *command,
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        f"hydra.run.dir={run_dir}",
        *FAST,
        *TINY_GEN,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "spurgen: error" not in out and "Starting with 2 processes" in out
    assert (run_dir / "pipeline" / "spurgen.json").exists() and (run_dir / "eval" / "metrics.json").exists()
    assert (run_dir / "train_ddp_process_1.log").exists()  # rank 1 ran (Hydra log of the re-run command)


def test_ddp_inside_basic_sweep_fails_early(tmp_path, capsys):
    argv = [
        "-m",
        *TINY,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        f"hydra.sweep.dir={tmp_path}",
        *FAST,
    ]
    assert run_cli(argv) == 2
    assert "submitit_slurm" in capsys.readouterr().err


def test_sweep_checks_every_job_before_it_starts_any(tmp_path, capsys):
    """A bad value in some jobs stops the sweep before job 0 trains: one line per problem naming the jobs (by
    the overrides that vary), exit 2, no sweep folder."""
    sweep = tmp_path / "sweep"
    argv = ["-m", "experiment=tiny_lambda_grid", "class=hummingbird,koala", "lambda_sfsl=0,-1",
            f"hydra.sweep.dir={sweep}", *FAST]  # fmt: skip
    assert run_cli(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "sweep jobs would fail, so none was started" in err
    assert (
        "jobs #2 (lambda_sfsl=-1 class=hummingbird), #3 (lambda_sfsl=-1 class=koala):" in err
    )  # Hydra's order
    assert "must be a finite number >= 0" in err and "#0 " not in err and not sweep.exists()


def test_planned_jobs_follow_hydras_basic_sweeper():
    from spurgen.cli.preflight import planned_jobs

    jobs = planned_jobs(["experiment=mini_lambda_grid", "seed=5"])  # the command line wins over the grid
    assert [j[:2] for j in jobs] == [[f"lambda_sfsl={v}", "seed=5"] for v in ("0", "0.01", "0.1", "1")]
    assert len(planned_jobs(["experiment=mini_lambda_grid"])) == 12  # 4 lambdas x 3 seeds
    assert planned_jobs(["class=koala", "--cfg", "job"]) is None  # Hydra flags: left to Hydra
    assert planned_jobs(["class=no_such_class,koala"]) is not None  # composition fails per job, not here
    assert planned_jobs(["experiment=no_such_experiment"]) is None  # Hydra reports it itself


def test_report_shows_each_rows_nearest_reference_psnr(tmp_path):
    """The memorisation check's PSNR per row: the seeds' mean and std of each run's median and largest value;
    a run without the numbers adds nothing."""
    from spurgen.report import aggregate, collect
    from spurgen.report.markdown import _memorisation_lines

    def memo(median, largest):
        return {"images": {"psnr_db": {"median": median, "max": largest}},
                "reference": {"psnr_db": {"median": 28.0, "max": 30.0}}}  # fmt: skip

    root = tmp_path / "sweep"
    _fake_run(root, 0, 0, 0.2, memorisation=memo(18.0, 21.0))
    _fake_run(root, 0, 1, 0.4, memorisation=memo(20.0, 25.0))
    _fake_run(root, 1, 0, 0.6)  # an older run: no memorisation block
    rows = aggregate(collect(root))
    lam0 = next(r for r in rows if r["row"] == "images" and r["lambda_sfsl"] == 0)
    assert lam0["stats"]["memorisation_psnr_median"]["mean"] == pytest.approx(19.0)
    assert lam0["stats"]["memorisation_psnr_max"]["mean"] == pytest.approx(23.0)
    assert lam0["stats"]["memorisation_psnr_max"]["std"] == pytest.approx(2**0.5 * 2)
    lam1 = next(r for r in rows if r["row"] == "images" and r["lambda_sfsl"] == 1)
    assert "memorisation_psnr_median" not in lam1["stats"]
    lines = _memorisation_lines([r for r in rows if r["row"] in ("reference", "images")])
    assert "| lambda_sfsl=0 | 19.000 ± 1.414 (n=2) | 23.000 ± 2.828 (n=2) |" in lines
    assert "| reference | 28.000 ± 0.000 (n=2) | 30.000 ± 0.000 (n=2) |" in lines
    assert any(line.startswith("| lambda_sfsl=1 | – | – |") for line in lines)


def test_figure_names_tell_tables_apart_by_class_file_and_identity():
    """Two pairs of one class (nematode from the moon and from the retina) get a figure each, named by their
    class files; two settings of one pair add the identity; a lone table keeps the short name."""
    from spurgen.report.figures import _stem

    moon, retina = (
        ("3", (111, "nematode", -1), "aaaaaaaa1111"),
        ("3", (111, "nematode_retina", -1), "aaaaaaaa1111"),
    )
    other = ("3", (111, "nematode", -1), "bbbbbbbb2222")
    koala = ("3", (105, "koala", -1), "aaaaaaaa1111")
    tables = [moon, retina, other, koala]
    assert [_stem(t, tables) for t in tables] == [
        "111_nematode_aaaaaaaa_v3", "111_nematode_retina_v3", "111_nematode_bbbbbbbb_v3", "105_v3"
    ]  # fmt: skip
    assert _stem(moon, [moon, other]) == "111_aaaaaaaa_v3" and _stem(moon, [moon]) == "111_v3"


def test_pooled_similarity_interval_by_hand():
    """Two seeds' images with cosines [0.1, 0.3] and [0.5, 0.7, 0.9]: each run stores its mean, std and count;
    pooled, the five images have mean 0.5 and variance 0.1, so the interval is 0.5 ± 1.96 sqrt(0.1 / 5)."""
    import statistics

    from spurgen.report.aggregate import _pooled_similarity
    from spurgen.report.collect import Run

    def run(values):
        sim = {"value": statistics.fmean(values), "std": statistics.stdev(values), "n": len(values)}
        per = {"a": {"spurious_rate": {"value": 0.0}, "similarity": sim}}
        return Run(
            Path("x"),
            "koala",
            (105, "", -1),
            0.1,
            0,
            "3",
            False,
            "id",
            {},
            {},
            {"images": {"per_classifier": per}},
            {},
        )

    pooled = _pooled_similarity("images", {0: (run([0.1, 0.3]), {}), 1: (run([0.5, 0.7, 0.9]), {})})["a"]
    half = 1.959964 * (0.1 / 5) ** 0.5
    assert pooled["n"] == 5 and pooled["mean"] == pytest.approx(0.5)
    assert pooled["ci"] == pytest.approx([0.5 - half, 0.5 + half])
    # a run without the images' spread (an older metrics.json) gives no interval
    old = run([0.1, 0.3])
    old.results["images"]["per_classifier"]["a"]["similarity"].pop("std")
    assert _pooled_similarity("images", {0: (old, {})}) == {}


def _arms_sweep(root: Path) -> dict:
    """Two arms (extractor a, extractor b) x lambda_sfsl {0, 1} x seeds {0, 1}, every image set rated by a and b
    (10 images); returns {(arm, lambda, seed): (rate under a, rate under b)}."""
    rates = {}
    for ext, lam, seed in __import__("itertools").product("ab", (0, 1), (0, 1)):
        # a's rate rises with lambda; b's rate is what the images show to the other classifier
        ra, rb = 0.2 + 0.5 * lam + 0.1 * seed, 0.1 + 0.05 * lam + 0.2 * seed
        rates[(ext, lam, seed)] = (ra, rb)
        run = root / f"feature_extractor={ext},lambda_sfsl={lam},seed={seed}"
        (run / ".hydra").mkdir(parents=True)
        # arm a's preset leaves the name to the loader (as feature_extractor=efficientnet_lite does)
        cfg = {"target": {"name": "koala", "index": 105}, "feature_extractor": {"name": ext if ext == "b" else None},
               "lambda_sfsl": lam, "seed": seed}  # fmt: skip
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
        block = _block(0.0)
        for c, r in (("a", ra), ("b", rb)):
            block["per_classifier"][c] = {"spurious_rate": {"value": r, "n": 10, "count": round(10 * r)},
                                          "kid": {"value": 0.01 + seed}}  # fmt: skip
        metrics = {"method_version": "1", "target": {"index": 105, "name": "koala"},
                   "results": {"images": block, "reference": _block(0.9, 1.0)},
                   "extractor": {"name": ext, "arch": "X", "layer": "pool", "used": True}}  # fmt: skip
        if lam == 0:  # no extractor built: the record spurgen/stages/train.py writes
            metrics["extractor"] = {"name": cfg["feature_extractor"]["name"], "used": False}
        (run / "eval").mkdir()
        (run / "eval" / "metrics.json").write_text(json.dumps(metrics))
    return rates


def test_adversarial_gap_is_the_training_extractors_rate_minus_each_held_out_rate(tmp_path):
    """Every generated row of an arm has `adversarial_gap/<other>` = rate under its own extractor minus rate
    under the other, mean and spread over the per-seed gaps; the lambda_sfsl = 0 row (extractor not used) is
    read under the arm's extractor."""
    from spurgen.report import aggregate, collect
    from spurgen.report.csv_rows import csv_lines
    from spurgen.report.markdown import markdown

    root = tmp_path / "arms"
    rates = _arms_sweep(root)
    rows = [r for r in aggregate(collect(root)) if r["row"] == "images"]
    assert len(rows) == 4
    for r in rows:
        ext = r["trained_extractor"]
        other = "b" if ext == "a" else "a"
        gaps = [
            (a - b) if ext == "a" else (b - a) for a, b in (rates[(ext, r["lambda_sfsl"], s)] for s in (0, 1))
        ]
        gap = r["stats"][f"adversarial_gap/{other}"]
        assert gap["mean"] == pytest.approx(sum(gaps) / 2) and gap["n"] == 2
        assert gap["std"] == pytest.approx(abs(gaps[0] - gaps[1]) / math.sqrt(2))
        assert f"adversarial_gap/{ext}" not in r["stats"]  # no gap against itself
    sweep = collect(root)
    md = markdown(sweep, aggregate(sweep), {}, root)  # report.md without its figures
    assert "| row | gap a − b |" in md and "| row | gap b − a |" in md
    # arm a at lambda 1: gaps 0.7 - 0.15 = 0.55 and 0.8 - 0.35 = 0.45 -> 0.500 ± 0.071; arm b: the negatives
    assert (
        "| lambda_sfsl=1 | 0.500 ± 0.071 (n=2) |" in md and "| lambda_sfsl=1 | -0.500 ± 0.071 (n=2) |" in md
    )
    assert {"adversarial_gap/a", "adversarial_gap/b"} <= {line["metric"] for line in csv_lines(rows)}
    # the cost table reads each arm's rows, lambda_sfsl = 0 included, under that arm's extractor
    from spurgen.report.cost import cost_rows

    assert {(e["extractor"], e["lambda_sfsl"]) for e in cost_rows(sweep, aggregate(sweep))} == {
        (a, lam) for a in "ab" for lam in (0, 1)
    }


def test_extractor_arms_table_puts_each_arms_rates_side_by_side(tmp_path, capsys):
    """experiments/extractor_arms.py: one line per (lambda, arm), pooled rates with Wilson intervals, the
    training extractor's in bold; bad input is one line and exit 2."""
    from experiments import extractor_arms
    from spurgen.eval.metrics import wilson_interval

    root = tmp_path / "arms"
    _arms_sweep(root)
    assert extractor_arms.main([str(root), "--out", str(tmp_path / "arms.md")]) == 0
    text = (tmp_path / "arms.md").read_text()
    assert text == capsys.readouterr().out
    lines = [line for line in text.splitlines() if line.startswith("| koala |")]
    assert [line.split(" | ")[1:3] for line in lines] == [["0", "a"], ["0", "b"], ["1", "a"], ["1", "b"]]
    # arm a at lambda 1: a rates 0.7 and 0.8 of 10 -> 15 of 20, b rates 0.15 and 0.35 -> 2 + 4 = 6 of 20
    lo, hi = wilson_interval(15, 20)
    assert f"**0.75 [{lo:.2f}, {hi:.2f}]**" in lines[2] and "| 0.30 [" in lines[2]
    rows, classifiers, held = extractor_arms.arm_rows(root)
    assert classifiers == ["a", "b"] and held == []  # both classifiers trained an arm: no common held-out
    assert extractor_arms.main([str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.startswith("error: ")
