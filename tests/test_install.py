"""A non-editable install works: the wheel holds every config file, and the `spurgen` console command of a fresh
virtual environment runs from a folder outside the repository, with a user's own class file."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from .conftest import REPO

pytestmark = pytest.mark.slow
PACKAGE = REPO / "spurgen"
MY_CLASS = "# @package target\nindex: 1\nname: goldfish\nconcept: bowl\n"


def sh(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


def build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    """`pip wheel --no-deps --no-build-isolation` of a copy of the sources: the checkout gets no build/ or
    egg-info (other runs may be building too) and files left in an old build/ cannot leak into the wheel."""
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(PACKAGE, src / "spurgen", ignore=ignore)
    shutil.copytree(REPO / "conf", src / "conf", ignore=ignore)  # the top-level config tree
    shutil.copytree(REPO / "experiments", src / "experiments", ignore=ignore)  # beside the package, not in it
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index"]
    sh([*pip, "-w", str(tmp / "wheels"), str(src)], tmp, env)
    (wheel,) = (tmp / "wheels").glob("spurgen-*.whl")
    return wheel


def make_venv(tmp: Path, wheel: Path, env: dict[str, str]) -> Path:
    """A fresh venv with the wheel installed (no deps); the dependencies come from this interpreter's
    site-packages. When this interpreter is itself a venv, --system-site-packages reaches only the base
    interpreter's, so a .pth adds ours, written after the install, so that pip never sees our spurgen; a .pth
    path line does not run our site-packages' own .pth files, so the editable spurgen's finder stays out."""
    venv = tmp / "venv"
    sh([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], tmp, env)
    python = venv / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index"]
    sh([*pip, "--force-reinstall", str(wheel)], tmp, env)
    if sys.prefix != sys.base_prefix:
        purelib = sh([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], tmp, env)
        Path(purelib.stdout.strip(), "_outer_site_packages.pth").write_text("\n".join(site.getsitepackages()))
    return venv


def test_wheel_install_runs_outside_the_repository(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SPURGEN_CONFIG_PATH")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheel = build_wheel(tmp_path, env)
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {
        f"spurgen/conf/{p.relative_to(REPO / 'conf').as_posix()}" for p in (REPO / "conf").rglob("*.yaml")
    }
    assets = {p.relative_to(REPO).as_posix() for p in (PACKAGE / "assets").rglob("*") if p.is_file()}
    modules = {p.relative_to(REPO).as_posix() for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts}
    for wanted in (conf, assets, modules):  # every config file (mapped into the package), asset and module
        assert wanted and not (wanted - names), f"missing from the wheel: {sorted(wanted - names)}"
    assert not any(n.startswith("conf/") for n in names), (
        "conf/ must ship inside the package, as spurgen/conf"
    )
    assert not any(n.startswith("experiments/") for n in names), "benchmarks and weight recreation stay out"
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "spurgen = spurgen.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()

    venv = make_venv(tmp_path, wheel, env)
    work = tmp_path / "work"
    work.mkdir()
    code = "import spurgen, spurgen.config as c; print(spurgen.__file__); print(c.asset_path('mini'))"
    where, mini = sh([str(venv / "bin" / "python"), "-c", code], work, env).stdout.split()
    assert Path(where).is_relative_to(venv), where  # the installed copy, not ours
    assert Path(mini).is_relative_to(venv) and Path(mini).parts[-3:] == ("spurgen", "assets", "mini"), mini

    spurgen = str(venv / "bin" / "spurgen")
    assert "\n  export " in sh([spurgen, "--help"], work, env).stdout
    default = "\n" + sh([spurgen, "run", "--cfg", "job"], work, env).stdout
    job = yaml.safe_load(default)  # the default: the mini world (model.path is resolved when a run builds it)
    assert job["target"]["index"] == 111 and job["target"]["name"] == "nematode"
    assert job["model"]["path"] == "${spurgen_asset:mini}"
    assert job["feature_extractor"]["_target_"].endswith("load_efficientnet_lite")
    assert job["feature_extractor"]["variant"] == 0
    assert sorted(job["eval"]["classifiers"]) == [f"efficientnet_lite{i}" for i in range(3)]
    module = "\n" + sh([str(venv / "bin" / "python"), "-m", "spurgen.run", "--cfg", "job"], work, env).stdout
    assert module == default
    user = tmp_path / "my_configs"
    (user / "class").mkdir(parents=True)
    (user / "class" / "my_class.yaml").write_text(MY_CLASS)
    user_env = {**env, "SPURGEN_CONFIG_PATH": str(user)}
    mine = sh([spurgen, "run", "class=my_class", "--cfg", "job"], work, user_env)
    target = ("\n" + mine.stdout).split("\ntarget:\n", 1)[1]
    assert target.startswith("  index: 1\n") and "  name: goldfish\n" in target
    assert not list(work.iterdir())  # --cfg job writes nothing
