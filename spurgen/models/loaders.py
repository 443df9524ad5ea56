"""Builders of real classifiers / robust feature extractors, one per kind, each returning a FrozenImageModel
(inputs in [0, 1]). Config nodes name them with `_target_` (conf/feature_extractor/*.yaml, conf/eval/*.yaml;
an evaluation classifier gets its name from its key in eval.classifiers).

- timm: any model by name, with a local weights file (safetensors, or a state dict read with
  weights_only=True) or timm's own download.
- robustbench: ImageNet models by name through robustbench's load_model and a local model_dir. Its
  packaging problems (ENVIRONMENT.md: it imports `autoattack`, installed as `pyautoattack`) are contained here.
  Its models normalise inside (Sequential(normalize, model)).
- madry: the MadryLab `robustness` l2 eps=3 ResNet-50 of Spurious ImageNet (imagenet_l2_3_0.pt). Keys are
  prefixed `module.model.` / `module.attacker.model.`; the file is a pickle, read only with allow_pickle.
  Normalisation is applied by the wrapper (METHOD.md: nothing is normalised twice).
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spurgen.errors import MissingWeightsError, SpurgenError
from spurgen.models.extractors import IMAGENET_MEAN, IMAGENET_STD, FrozenImageModel

MADRY_PREFIXES = ("module.model.", "module.attacker.model.", "model.", "attacker.model.")


def _missing(path: Path, what: str, hint: str = "") -> MissingWeightsError:
    return MissingWeightsError(f"{what}: weights file {path} not found" + (f"; {hint}" if hint else ""))


def read_state_dict(path: str | Path, allow_pickle: bool = False, what: str = "weights") -> dict[str, Any]:
    """A checkpoint file -> its top-level object (safetensors, or torch.load with weights_only unless
    allow_pickle). Raises MissingWeightsError / SpurgenError with the file name."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise _missing(path, what)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as exc:
        if allow_pickle:
            raise SpurgenError(f"cannot read {what} file {path}: {exc}") from None
        raise SpurgenError(
            f"{what} file {path} holds pickled Python objects, which can run code when loaded; "
            "if you trust the file, set allow_pickle=true (an option of eval.classifiers.<name> / feature_extractor)"
        ) from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise SpurgenError(f"cannot read {what} file {path}: {str(exc).splitlines()[0]}") from None


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Checkpoints nest the weights under 'state_dict' / 'model' / 'model_state_dict' at times."""
    for key in ("state_dict", "model_state_dict", "model", "net"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SpurgenError("checkpoint does not hold a state dict of tensors")
    return obj


def _load_into(model: nn.Module, state: dict[str, torch.Tensor], path: Path, what: str) -> None:
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes that do not fit
        raise SpurgenError(
            f"{what}: {path} does not match the architecture: {str(exc).splitlines()[-1].strip()[:300]}"
        ) from None
    if result.missing_keys or result.unexpected_keys:
        raise SpurgenError(
            f"{what}: {path} does not match the architecture: "
            f"{len(result.missing_keys)} missing keys (e.g. {result.missing_keys[:3]}), "
            f"{len(result.unexpected_keys)} unexpected keys (e.g. {result.unexpected_keys[:3]})"
        )


def load_timm(  # noqa: PLR0913 - config-bound builder: its arguments are the keys of its config node
    arch: str,
    weights: str | None = None,
    name: str | None = None,
    layer: str = "pool",
    temperature: float = 1.0,
    input_size: int | None = None,
    random_init: bool = False,
    allow_pickle: bool = False,
    model_kwargs: dict | None = None,
) -> FrozenImageModel:
    """timm model `arch`; weights from a local file, or (weights null) the hub file timm would download."""
    import timm

    name = name or arch
    if not timm.is_model(arch):
        raise SpurgenError(f"classifier {name!r}: timm has no model named {arch!r}")
    kwargs = dict(model_kwargs or {})
    if weights is None and not random_init:  # before building: a missing file fails fast
        pretrained_cfg = timm.models.get_pretrained_cfg(arch)
        weights = _hub_weights(pretrained_cfg.to_dict() if pretrained_cfg else {}, name, arch)
    rng_state = torch.random.get_rng_state()
    if random_init:
        torch.manual_seed(0)  # random but reproducible: every load of a tiny classifier is the same model
    try:
        # pretrained=False always: timm 1.0.9 (pinned by robustbench) cannot import huggingface_hub 2.x, so
        # its own download is broken; _hub_weights fetches the same file (cache first).
        model = timm.create_model(arch, pretrained=False, num_classes=1000, **kwargs)
    except (OSError, RuntimeError, ValueError, TypeError) as exc:
        raise SpurgenError(f"classifier {name!r}: cannot build timm model {arch!r}: {exc}") from None
    finally:
        torch.random.set_rng_state(rng_state)
    if weights is not None:
        path = Path(weights).expanduser()
        what = f"classifier {name!r} ({arch})"
        _load_into(model, unwrap_state_dict(read_state_dict(path, allow_pickle, what)), path, what)
    cfg = model.pretrained_cfg
    size = int(input_size or cfg.get("input_size", (3, 224, 224))[-1])
    wrapped = FrozenImageModel(model, cfg.get("classifier", "fc"), size, False, name=name, layer=layer)
    wrapped.normalize_with(tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD)))
    wrapped.temperature = float(temperature)
    wrapped.interpolation = _interp(cfg.get("interpolation"))
    wrapped.crop_pct = float(cfg.get("crop_pct", 0.875))
    wrapped.is_random = bool(random_init)
    wrapped.arch, wrapped.weights = arch, None if weights is None else str(Path(weights).expanduser())
    return wrapped


def _hub_weights(cfg: dict, name: str, arch: str) -> str:
    """Path of the model's timm weights on the Hugging Face hub (downloaded into, or read from, its cache)."""
    repo = cfg.get("hf_hub_id")
    if not repo:
        raise MissingWeightsError(
            f"classifier {name!r}: timm has no hub weights for {arch!r}; give weights=/path/to/{arch}.safetensors"
        )
    from huggingface_hub import hf_hub_download

    try:
        return hf_hub_download(repo, cfg.get("hf_hub_filename") or "model.safetensors")
    except Exception as exc:  # noqa: BLE001 - offline, network and missing-file errors alike
        raise MissingWeightsError(
            f"classifier {name!r}: weights file model.safetensors of hub repo {repo} is not in the Hugging Face "
            f"cache and could not be downloaded ({type(exc).__name__}); offline, give a local file: "
            f"weights=/path/to/{arch}.safetensors"
        ) from None


def _interp(value: str | None) -> str:
    return value if value in ("bilinear", "bicubic", "nearest") else "bicubic"


def import_robustbench():
    """Import robustbench.utils.load_model despite its packaging: alias `autoattack` -> `pyautoattack`."""
    if "autoattack" not in sys.modules:
        try:
            pkg = importlib.import_module("pyautoattack")
            sys.modules["autoattack"] = pkg
            for sub in (
                "autoattack",
                "state",
                "autopgd_base",
                "checks",
                "other_utils",
                "square",
                "fab_pt",
                "fab_base",
                "fab_projections",
            ):
                try:
                    sys.modules[f"autoattack.{sub}"] = importlib.import_module(f"pyautoattack.{sub}")
                except ImportError:
                    pass
        except ImportError:
            pass  # a real `autoattack` may be installed instead
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pkg_resources deprecation
            from robustbench.utils import load_model
    except ImportError as exc:
        raise SpurgenError(
            f"robustbench does not import ({exc}); install robustbench==1.1.1, pyautoattack and "
            "setuptools<81 (see pyproject.toml)"
        ) from None
    return load_model


def load_robustbench(  # noqa: PLR0913 - config-bound builder: its arguments are the keys of its config node
    arch: str,
    model_dir: str | None = None,
    threat_model: str = "Linf",
    name: str | None = None,
    layer: str = "pool",
    temperature: float = 1.0,
    input_size: int | None = None,
) -> FrozenImageModel:
    """A RobustBench ImageNet model by name (Salman2020Do_R50, Engstrom2019Robustness, ...) from
    <model_dir>/imagenet/<threat_model>/<arch>.pt. Offline, a missing file is one clear error."""
    name = name or arch
    model_dir = model_dir or os.environ.get("ROBUSTBENCH_MODEL_DIR", "models")
    path = Path(model_dir).expanduser() / "imagenet" / threat_model / f"{arch}.pt"
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("SPURGEN_OFFLINE") == "1"
    if not path.is_file() and offline:
        raise _missing(
            path,
            f"classifier {name!r} (RobustBench {arch})",
            "download it once with network access or put the file there (model_dir=...)",
        )
    load_model = import_robustbench()
    try:
        model = load_model(
            arch, model_dir=str(Path(model_dir).expanduser()), dataset="imagenet", threat_model=threat_model
        )
    except KeyError:
        raise SpurgenError(
            f"classifier {name!r}: RobustBench has no ImageNet {threat_model} model {arch!r}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - robustbench raises anything (gdown, pickle, HTTP)
        if not path.is_file():
            raise _missing(
                path, f"classifier {name!r} (RobustBench {arch})", f"download failed: {exc}"
            ) from None
        raise SpurgenError(f"classifier {name!r}: robustbench could not load {path}: {exc}") from None
    head = "model.fc" if "model.fc" in dict(model.named_modules()) else _last_linear(model)
    wrapped = FrozenImageModel(model, head, input_size or 224, normalizes_inside=True, name=name, layer=layer)
    wrapped.temperature = float(temperature)
    wrapped.crop_pct = 224 / 256  # RobustBench's 'Res256Crop224'
    wrapped.arch, wrapped.weights = f"robustbench:{arch}", str(path)
    return wrapped


def _last_linear(model: nn.Module) -> str:
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise SpurgenError("model has no final linear layer to take features from")
    return names[-1]


def madry_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """MadryLab checkpoint -> a torchvision state dict: take 'model' (or 'state_dict'), keep the keys
    under `module.model.` (else `module.attacker.model.`), strip the prefix, drop the normalizer."""
    state = obj.get("model", obj.get("state_dict", obj)) if isinstance(obj, dict) else obj
    if not isinstance(state, dict):
        raise SpurgenError("MadryLab checkpoint holds no state dict under 'model'")
    for prefix in MADRY_PREFIXES:
        sub = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        if sub:
            return sub
    raise SpurgenError(
        f"not a MadryLab robustness checkpoint: no keys start with {' or '.join(MADRY_PREFIXES[:2])}"
    )


def load_madry(  # noqa: PLR0913 - config-bound builder: its arguments are the keys of its config node
    weights: str,
    arch: str = "resnet50",
    allow_pickle: bool = False,
    name: str | None = None,
    layer: str = "pool",
    temperature: float = 1.0,
    input_size: int | None = None,
) -> FrozenImageModel:
    """The MadryLab robustness ResNet (imagenet_l2_3_0.pt: l2, eps=3), normalisation applied outside."""
    import torchvision

    name = name or f"madry_{arch}"
    if not weights:
        raise SpurgenError(f"classifier {name!r}: load_madry needs weights=/path/to/imagenet_l2_3_0.pt")
    path = Path(weights).expanduser()
    what = f"classifier {name!r} (MadryLab {arch})"
    if not path.is_file():
        raise _missing(path, what, "download imagenet_l2_3_0.pt from the MadryLab robustness release")
    if not hasattr(torchvision.models, arch):
        raise SpurgenError(f"{what}: torchvision has no architecture {arch!r}")
    model = getattr(torchvision.models, arch)(weights=None)
    _load_into(model, madry_state_dict(read_state_dict(path, allow_pickle, what)), path, what)
    wrapped = FrozenImageModel(
        model, "fc", input_size or 224, normalizes_inside=False, name=name, layer=layer
    )
    wrapped.temperature = float(temperature)
    wrapped.crop_pct = 224 / 256  # torchvision's resize 256, centre crop 224
    wrapped.arch, wrapped.weights = f"torchvision:{arch}", str(path)
    return wrapped
