"""The documented several-seed figures (spurgen/eval/documented.py): a run sees them only for its own setting,
and every shipped entry still names a setting that today's config composes."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from spurgen.config import CONF_DIR, register_configs, register_resolvers
from spurgen.eval.documented import documented_lines as lines_for
from spurgen.eval.documented import figures_path, find_entry, seed_table
from spurgen.identity import class_key, run_identity

from .helpers import TINY

register_configs()
register_resolvers()


def load(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def stats(mean, lo, hi):
    return {"mean": mean, "min": lo, "max": hi, "std": 0.1}


def entry_for(cfg, lam=0.1):
    return {
        "method_version": str(cfg.method_version),
        "class_file": class_key(cfg)[1],
        "identity": run_identity(cfg),
        "lambda_sfsl": lam,
        "seeds": [0, 1, 2],
        "images": {"clf_a": {"spurious_rate": stats(0.5, 0.25, 0.75), "similarity": stats(0.6, 0.55, 0.65)}},
        "baseline": {
            "clf_a": {"spurious_rate": stats(0.2, 0.125, 0.25), "similarity": stats(0.4, 0.39, 0.41)}
        },
    }


RESULT = {"results": {"images": {"per_classifier": {"clf_a": {"spurious_rate": {"value": 0.625},
                                                              "similarity": {"value": 0.612}}}}}}  # fmt: skip


def test_a_run_sees_the_figures_of_its_own_setting_only(tmp_path):
    cfg = load(*TINY, "lambda_sfsl=0.1")
    path = tmp_path / "figures.json"
    path.write_text(json.dumps({"source": "docs/x.md", "machine": "test box", "threads": 1,
                                "entries": [entry_for(cfg)]}))  # fmt: skip
    text = documented_lines(cfg, RESULT, path)
    lines = text.splitlines()
    assert "docs/x.md" in lines[0] and "seeds 0, 1, 2" in lines[0] and "test box, 1 torch thread" in lines[0]
    assert lines[2].split() == ["clf_a", "0.62", "0.612", "0.50", "[0.25,", "0.75]", "0.600", "[0.550,", "0.650]",
                                "0.20", "[0.12,", "0.25]", "0.400", "[0.390,", "0.410]"]  # fmt: skip
    # another lambda, another class, other settings, another method version: nothing
    assert documented_lines(load(*TINY, "lambda_sfsl=1"), RESULT, path) is None
    assert documented_lines(load(*TINY, "lambda_sfsl=0.1", "class=koala"), RESULT, path) is None
    assert documented_lines(load(*TINY, "lambda_sfsl=0.1", "trainer.max_steps=7"), RESULT, path) is None
    assert documented_lines(load(*TINY, "lambda_sfsl=0.1", "method_version=0"), RESULT, path) is None
    assert documented_lines(cfg, RESULT, tmp_path / "absent.json") is None
    header, entry = find_entry(str(cfg.method_version), class_key(cfg)[1], run_identity(cfg), 0.1, path)
    assert header["machine"] == "test box" and entry["seeds"] == [0, 1, 2]
    assert "-" in seed_table(header, entry, {"results": {}}).splitlines()[2]  # a run with no images row


def documented_lines(cfg, result, path):
    """As spurgen/cli/run.py calls it: the composed config's setting."""
    setting = (str(cfg.method_version), class_key(cfg)[1], run_identity(cfg), float(cfg.lambda_sfsl))
    return lines_for(*setting, result, path)


def shipped_entries():
    path = figures_path()
    return json.loads(path.read_text())["entries"] if path.is_file() else []


@pytest.mark.parametrize("entry", shipped_entries(), ids=lambda e: f"{e['class_file']}-{e['lambda_sfsl']}")
def test_each_shipped_entry_names_a_setting_todays_config_composes(entry):
    """`python -m spurgen.run class=<file> lambda_sfsl=<value>` on the default experiment composes the identity
    the entry was measured under: a change to the default run's settings (or to what an identity holds) must
    come with new figures (experiments/seed_figures.py)."""
    cfg = load(f"class={entry['class_file']}", f"lambda_sfsl={entry['lambda_sfsl']}")
    assert (str(cfg.method_version), run_identity(cfg)) == (entry["method_version"], entry["identity"])
    assert len(entry["seeds"]) >= 3 and set(entry["images"]) == set(cfg.eval.classifiers)


def test_the_default_run_has_shipped_figures():
    if not shipped_entries():
        pytest.skip("no figures shipped yet")
    cfg = load()
    assert find_entry(str(cfg.method_version), class_key(cfg)[1], run_identity(cfg), float(cfg.lambda_sfsl))
