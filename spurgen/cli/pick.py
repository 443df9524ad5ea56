"""usage: spurgen pick <folder> class=<name or ImageNet index> [n=5] [min_classifiers=k] [scales=[1.0,0.6,0.35]]
                    [crops_per_photo=96] [size=<px>] [seed=0] [max_iou=0.5] [max_cosine=0.95] [out_dir=<folder>]
                    [eval=mini|default|...]

Pick reference images for a spurious pair from a folder of photos: the whole photos and seeded random square
crops of them (scales: the crop's side over the photo's short side) are labelled by the classifiers of the eval
group (default eval=mini: EfficientNet-Lite0/1/2, offline). A crop qualifies when at least min_classifiers
(default: all) give the class top-1; the qualifying ones are ranked by agreement, then by the lowest probability,
and kept while diverse (IoU <= max_iou on one photo, feature cosine <= max_cosine with the first classifier's
pooled features). out_dir (missing or empty) gets the crops as PNG, selection.json and contact_sheet.html; with
fewer than n diverse qualifying crops it says so in one line and writes nothing (exit 2).

  class=nematode                     a class file (conf/class/, or $SPURGEN_CONFIG_PATH/class/)
  class=111                          any ImageNet class by index (= class=imagenet target.index=111)
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from spurgen.cli.common import guarded, register_app_configs, resolve_target, run_main
from spurgen.config import CONF_DIR
from spurgen.errors import SpurgenError

register_app_configs()
_COMMAND: list[str] = []  # the command line as the user gave it, for selection.json


def _settings(cfg: DictConfig, num_classifiers: int):
    """The PickSettings of cfg, or a SpurgenError naming the bad key."""
    from spurgen.stages.pick import PickSettings

    k = num_classifiers if cfg.min_classifiers is None else int(cfg.min_classifiers)
    checks = [
        (
            1 <= k <= num_classifiers,
            f"min_classifiers must be in 1..{num_classifiers} (the number of classifiers), got {k}",
        ),
        (int(cfg.n) >= 1, f"n must be at least 1, got {cfg.n}"),
        (
            len(cfg.scales) > 0 and all(0 < float(x) <= 1 for x in cfg.scales),
            f"scales must be in (0, 1], got {list(cfg.scales)}",
        ),
        (int(cfg.crops_per_photo) >= 0, f"crops_per_photo must be >= 0, got {cfg.crops_per_photo}"),
        (
            cfg.whole_photos or int(cfg.crops_per_photo) > 0,
            "no candidates: whole_photos=false and crops_per_photo=0",
        ),
        (cfg.size is None or int(cfg.size) >= 1, f"size must be >= 1 pixel or null, got {cfg.size}"),
        (0 <= float(cfg.max_iou) <= 1, f"max_iou must be in [0, 1], got {cfg.max_iou}"),
        (-1 <= float(cfg.max_cosine) <= 1, f"max_cosine must be in [-1, 1], got {cfg.max_cosine}"),
    ]
    for ok, message in checks:
        if not ok:
            raise SpurgenError(message)
    return PickSettings(
        n=int(cfg.n),
        min_classifiers=k,
        scales=tuple(float(x) for x in cfg.scales),
        crops_per_photo=int(cfg.crops_per_photo),
        whole=bool(cfg.whole_photos),
        size=None if cfg.size is None else int(cfg.size),
        seed=int(cfg.seed),
        max_iou=float(cfg.max_iou),
        max_cosine=float(cfg.max_cosine),
        batch_size=int(cfg.eval.batch_size),
    )


def _out_dir(value: str) -> Path:
    """out_dir, missing or empty, with a writable parent (created), or a SpurgenError."""
    from spurgen.files import output_folder

    out = Path(value).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SpurgenError(f"out_dir {out} exists and is not an empty folder: choose a new one")
    output_folder(out.absolute().parent, "out_dir")
    return out


def _task(cfg: DictConfig) -> dict:
    from spurgen.data.images import list_images
    from spurgen.eval.classifiers import build_classifiers
    from spurgen.eval.predict import pick_device
    from spurgen.stages.pick import pick, read_photos
    from spurgen.validation import eval_problems

    if cfg.get("target") is None:
        raise SpurgenError("class=<name or ImageNet index> is required (class=nematode, class=111)")
    index, _ = resolve_target(cfg)
    eval_problems(cfg.eval).raise_any()
    if not cfg.eval.classifiers:
        raise SpurgenError(
            "the eval group has no classifiers (eval=mini, eval=default, or +eval.classifiers...)"
        )
    s = _settings(cfg, len(cfg.eval.classifiers))
    out = _out_dir(cfg.out_dir)
    files = list_images(cfg.folder)
    photos = read_photos(files)  # every input checked before a model is built
    names = list(cfg.eval.classifiers)
    print(
        f"spurgen pick: {len(photos)} photo{'' if len(photos) == 1 else 's'}, class {index} {cfg.target.name}; >= {s.min_classifiers} of "
        f"{len(names)} classifiers ({', '.join(names)}) top-1; max_iou {s.max_iou}, max_cosine {s.max_cosine} "
        f"(features: {names[0]}'s pooled features)"
    )
    models = build_classifiers(
        cfg.eval.classifiers, pick_device(cfg.eval.device), bool(cfg.eval.channels_last)
    )
    command = " ".join(["spurgen pick", *(shlex.quote(a) for a in _COMMAND)])
    record = pick(models, photos, out, index, s, command)
    for c in record["crops"]:
        figures = ", ".join(f"{k} {v:.3f}" for k, v in c["p"].items())
        print(f"  {c['file']}: {c['source']} box {c['box']} agreement {c['agreement']}; {figures}")
    print(
        f"spurgen: picked {len(record['crops'])} of {record['num_candidates']} candidates "
        f"({record['num_qualifying']} qualified) -> {out}"
    )
    return record


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="pick")
def _hydra_entry(cfg: DictConfig) -> None:
    guarded(_task)(cfg)


def _class_files() -> set[str]:
    from spurgen.cli.searchpath import user_config_dirs

    dirs = [Path(CONF_DIR), *user_config_dirs()]
    return {p.stem for d in dirs for p in (d / "class").glob("*.yaml")}


def overrides(argv: list[str]) -> list[str]:
    """The Hydra overrides of `spurgen pick` arguments: the positional folder becomes folder=..., class=<index>
    becomes class=imagenet target.index=<index>; an unknown class file is a SpurgenError."""
    out, folders = [], []
    for arg in argv:
        if "=" not in arg and not arg.startswith("-"):
            folders.append(arg)
            continue
        key, _, value = arg.partition("=")
        if key == "class" and re.fullmatch(r"\d+", value):
            out += ["class=imagenet", f"target.index={value}"]
            continue
        if key == "class" and not any(a.startswith("--config-dir") or a == "-cd" for a in argv):
            known = _class_files()
            if value not in known:
                raise SpurgenError(
                    f"unknown class {value!r}: give an ImageNet index (class=111) or a class file: "
                    + ", ".join(sorted(known))
                )
        out.append(arg)
    if len(folders) > 1:
        raise SpurgenError(f"one folder of photos, got {len(folders)}: {', '.join(folders)}")
    if folders:
        quoted = folders[0].replace("\\", "\\\\").replace("'", "\\'")
        out.insert(0, f"folder='{quoted}'")
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    """`spurgen pick <folder> class=... [overrides]`; return the exit code (0 ok, 2 input error)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if any(a in ("-h", "--help") for a in args):
        print(__doc__.strip())
        return 0
    try:
        hydra_args = overrides(args)
    except SpurgenError as exc:
        print(f"spurgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    _COMMAND[:] = args
    return run_main(_hydra_entry, prog, hydra_args)
