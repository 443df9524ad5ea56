"""The `spurgen` dispatcher (spurgen/cli/__init__.py) and users' config folders (SPURGEN_CONFIG_PATH,
spurgen/cli/searchpath.py) with the editable install; tests/test_install.py covers the built wheel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import spurgen.cli
import spurgen.cli.common  # noqa: F401 - registers the search-path plugin, as every entry point does
from spurgen.cli.searchpath import ENV_VAR, PROVIDER
from spurgen.config import CONF_DIR


def write_class(root: Path, file: str, index: int, name: str) -> Path:
    """A user's class file, laid out like conf/class/<file>.yaml."""
    (root / "class").mkdir(parents=True, exist_ok=True)
    text = f"# @package target\nindex: {index}\nname: {name}\nconcept: bowl\n"
    (root / "class" / f"{file}.yaml").write_text(text)
    return root


def target_of(stdout: str) -> dict[str, str]:
    """index and name in the top-level `target:` block that `--cfg job` prints."""
    lines = stdout.splitlines()
    found: dict[str, str] = {}
    for line in lines[lines.index("target:") + 1 :]:
        if not line.startswith("  "):
            break
        key, _, value = line.strip().partition(": ")
        if key in ("index", "name"):
            found[key] = value
    return found


def test_help_lists_every_command(capsys):
    assert spurgen.cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("run", "generate", "evaluate", "export", "report"):
        assert f"\n  {name} " in out
    assert ENV_VAR in out
    assert spurgen.cli.main(["--version"]) == 0 and capsys.readouterr().out.startswith("spurgen 0.")


@pytest.mark.parametrize("argv", [["bogus", "class=koala"], []])
def test_unknown_or_missing_command_is_one_line_and_exit_2(argv, capsys):
    assert spurgen.cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("spurgen: error: ")
    assert ("'bogus'" in err) == bool(argv) and "run, generate, evaluate, export, report" in err


def test_dispatch_passes_the_rest_of_argv(capsys):
    assert spurgen.cli.main(["run", "--cfg", "job", "class=koala", "seed=7"]) == 0
    out = capsys.readouterr().out
    assert target_of(out) == {"index": "105", "name": "koala"} and "\nseed: 7\n" in out
    assert spurgen.cli.main(["report", "--help"]) == 0  # argparse's prog names the subcommand
    assert "usage: spurgen report" in capsys.readouterr().out
    assert spurgen.cli.main(["report"]) == 2  # argparse's usage error: an exit code, no SystemExit
    assert "the following arguments are required: sweep_dir" in capsys.readouterr().err


@pytest.mark.parametrize("main_spec", [None, "spurgen.__main__"])
def test_dispatcher_ddp_ranks_rerun_the_module(monkeypatch, main_spec):
    """From the `spurgen` console script (__main__ has no spec) Lightning would start DDP rank 1 with
    `python 'spurgen run' ...`, and from `python -m spurgen run` with `python -m spurgen.__main__ <overrides>`;
    the dispatcher makes both `python -m spurgen.run ...`, and restores __main__."""
    from importlib.util import find_spec

    from lightning.fabric.strategies.launchers.subprocess_script import _basic_subprocess_cmd

    spec = find_spec(main_spec) if main_spec else None
    seen: list = []
    monkeypatch.setattr(sys.modules["__main__"], "__spec__", spec)
    monkeypatch.setattr("spurgen.cli.run.main", lambda argv, prog: seen.append(_basic_subprocess_cmd()) or 0)
    monkeypatch.setattr(sys, "argv", ["/venv/bin/spurgen", "run", "trainer=ddp"])
    assert spurgen.cli.main() == 0
    assert seen[0][1:3] == ["-m", "spurgen.run"]
    assert sys.modules["__main__"].__spec__ is spec


@pytest.mark.slow
@pytest.mark.parametrize("command", list(spurgen.cli.COMMANDS))
def test_python_dash_m_spurgen_runs_each_command(command, tmp_path):
    """`python -m spurgen <command>` is `spurgen <command>` (spurgen/__main__.py)."""
    proc = subprocess.run(
        [sys.executable, "-m", "spurgen", command, "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip()


def test_no_command_shims_at_the_top_of_the_package():
    """Commands are `spurgen <command>` / `python -m spurgen <command>` (spurgen/__main__.py); the one module per
    command at the top of the package is run.py (`python -m spurgen.run`)."""
    package = Path(spurgen.cli.__file__).parents[1]
    top = {p.stem for p in package.glob("*.py")}
    assert top & set(spurgen.cli.COMMANDS) == {"run"}
    runnable = {p.name for p in package.glob("*.py") if "__main__" in p.read_text()}
    assert runnable == {"run.py", "__main__.py"}


def test_user_class_from_config_path(tmp_path, monkeypatch, capsys):
    """SPURGEN_CONFIG_PATH: folders searched in order, before the packaged conf (a user file replaces a packaged
    one of the same name); the compose API sees them too."""
    first = write_class(tmp_path / "first", "my_class", 1, "goldfish")
    write_class(first, "koala", 2, "not_a_koala")
    second = write_class(tmp_path / "second", "my_class", 3, "shark")
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(first), "", str(second)]))  # an empty entry is skipped
    from spurgen.run import main

    assert main(["class=my_class", "--cfg", "job"]) == 0
    assert target_of(capsys.readouterr().out) == {"index": "1", "name": "goldfish"}
    assert main(["class=koala", "--cfg", "job"]) == 0
    assert target_of(capsys.readouterr().out) == {"index": "2", "name": "not_a_koala"}
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["class=my_class"])
    assert cfg.target.name == "goldfish"


def test_config_path_is_used_by_every_hydra_entry_point(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, str(write_class(tmp_path / "conf", "my_class", 7, "goldfish")))
    from spurgen.cli.evaluate import main as evaluate
    from spurgen.cli.export import main as export
    from spurgen.cli.generate import main as generate

    for main, args in ((generate, []), (evaluate, ["images_dir=x"]), (export, ["images_dir=x"])):
        assert main(["class=my_class", *args, "--cfg", "job"]) == 0
        assert target_of(capsys.readouterr().out) == {"index": "7", "name": "goldfish"}


def test_missing_config_path_folder_is_one_line(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "no_such_folder"
    monkeypatch.setenv(ENV_VAR, os.pathsep.join([str(tmp_path), str(missing)]))
    from spurgen.cli.generate import main as generate
    from spurgen.run import main

    for entry in (main, generate):
        assert entry(["--cfg", "job"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{ENV_VAR}: {missing} is not a folder" in err


def test_hydra_config_dir_still_works(tmp_path, capsys):
    conf = write_class(tmp_path / "conf", "my_class", 5, "goldfish")
    from spurgen.run import main

    assert main(["--config-dir", str(conf), "class=my_class", "--cfg", "job"]) == 0
    assert target_of(capsys.readouterr().out) == {"index": "5", "name": "goldfish"}


def test_plugin_leaves_other_hydra_apps_alone(tmp_path, monkeypatch):
    from hydra._internal.utils import create_config_search_path

    user = write_class(tmp_path / "user", "my_class", 1, "goldfish")
    monkeypatch.setenv(ENV_VAR, str(user))
    ours = [(e.provider, e.path) for e in create_config_search_path(CONF_DIR).get_path()]
    assert ours[1:3] == [(PROVIDER, f"file://{user.resolve()}"), ("main", CONF_DIR)]
    other = create_config_search_path(str(tmp_path)).get_path()
    assert PROVIDER not in {e.provider for e in other}


def test_python_dash_m_shim_runs_the_hydra_app(tmp_path):
    """`python -m spurgen.run` runs the shim as __main__; @hydra.main lives in spurgen.cli.run."""
    user = write_class(tmp_path / "user", "my_class", 9, "goldfish")
    env = {**os.environ, ENV_VAR: str(user)}
    proc = subprocess.run(
        [sys.executable, "-m", "spurgen.run", "class=my_class", "--cfg", "job"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert target_of(proc.stdout) == {"index": "9", "name": "goldfish"}


REFUSAL_BUDGET_S = 3.0  # a config mistake is refused within this wall time (2-core CI machine)
MISTAKES = [
    (["lamda_sfsl=0.1"], "lamda_sfsl"),  # a misspelled key
    (["class=nematoad"], "nematoad"),  # an unknown class
    (["lambda_sfsl=-1"], "lambda_sfsl"),  # a negative weight
    (["trainer.max_steps=many"], "max_steps"),  # a bad type
    (["data.reference_dir=/no/such/folder"], "/no/such/folder"),  # a missing reference folder
]


@pytest.mark.parametrize(("argv", "needle"), MISTAKES, ids=[m[1] for m in MISTAKES])
def test_config_mistakes_are_refused_in_seconds(argv, needle, tmp_path):
    """`python -m spurgen.run <mistake>`: one message naming the mistake, a non-zero exit and no run folder,
    before torch, Lightning or diffusers are imported, so within the budget."""
    import time

    code = "import sys, runpy; sys.argv = ['spurgen.run', *sys.argv[1:]]; runpy.run_module('spurgen.run', run_name='__main__')"
    probe = "import atexit, sys; atexit.register(lambda: print('HEAVY', sorted(m for m in ('torch', 'lightning', 'diffusers') if m in sys.modules), file=sys.stderr))"
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", f"{probe}\n{code}", *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    wall = time.perf_counter() - started
    print(f"{' '.join(argv)}: refused in {wall:.2f} s (budget {REFUSAL_BUDGET_S} s)")
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "HEAVY []" in proc.stderr, proc.stderr  # nothing heavy was imported before the refusal
    assert not list(tmp_path.iterdir()), list(tmp_path.rglob("*"))  # no run folder left behind
    assert wall <= REFUSAL_BUDGET_S, f"refused in {wall:.2f} s, over the {REFUSAL_BUDGET_S} s budget"
