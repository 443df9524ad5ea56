"""The `spurgen` command: `spurgen <command> [args...]` hands the rest of the command line to that command.

`python -m spurgen <command> ...` (spurgen/__main__.py) is the same, and `python -m spurgen.run ...` is
`spurgen run ...`. The commands' modules are imported only when their command is chosen, so `spurgen --help`
answers at once.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Iterator
from contextlib import contextmanager

# command -> one line of help; its code is spurgen/cli/<command>.py (main(argv, prog) -> exit code)
COMMANDS: dict[str, str] = {
    "run": "train -> generate -> evaluate one run, or a sweep with -m (Hydra)",
    "generate": "images from a fine-tuned pipeline or the base model",
    "evaluate": "spurious rates of a folder of images across classifiers",
    "export": "the images predicted as the target by >= m classifiers",
    "report": "tables and figures of a sweep folder",
    "pick": "reference crops for a spurious pair from a folder of photos (>= k classifiers agree)",
    "review": "a local web page for people to review or rate images (spurgen/review/)",
    "dashboard": "the W&B workspace and report of a sweep; dashboard.json offline (spurgen/dashboards/)",
}
MODULES = {
    "review": "spurgen.review.cli",
    "dashboard": "spurgen.dashboards.command",
}  # commands whose code is not spurgen/cli/<command>.py
# command -> the module that `python -m <module> <args>` runs it with: Lightning's DDP launcher starts ranks 1..
# that way, and only `run` trains
RELAUNCH = {"run": "spurgen.run"}


def usage() -> str:
    """The text of `spurgen --help`."""
    lines = [
        "usage: spurgen <command> [args...]",
        "",
        "commands (also `python -m spurgen <command> [args...]`; `spurgen <command> --help`):",
    ]
    lines += [f"  {name:<9} {text}" for name, text in COMMANDS.items()]
    lines += [
        "",
        "Users' config folders (laid out like conf/: class/, model/, experiment/ ...):",
        "  SPURGEN_CONFIG_PATH=dir1:dir2 (searched before the packaged configs), or Hydra's --config-dir DIR.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch `spurgen <command> ...`; return the exit code (2: unknown or missing command)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args and args[0] in ("-h", "--help"):
        print(usage())
        return 0
    if args and args[0] == "--version":
        print(f"spurgen {_version()}")
        return 0
    if not args or args[0] not in COMMANDS:
        given = f"unknown command {args[0]!r}" if args else "no command given"
        choices = ", ".join(COMMANDS)
        print(f"spurgen: error: {given}; choose one of {choices} (spurgen --help)", file=sys.stderr)
        return 2
    name, rest = args[0], args[1:]
    module = importlib.import_module(MODULES.get(name, f"spurgen.cli.{name}"))
    with _main_module_as(RELAUNCH.get(name)):
        return module.main(rest, prog=f"spurgen {name}")


def _version() -> str:
    try:
        return importlib.metadata.version("spurgen")
    except importlib.metadata.PackageNotFoundError:  # a checkout on sys.path, not installed
        return "(not installed)"


@contextmanager
def _main_module_as(module: str | None) -> Iterator[None]:
    """While a command runs from the dispatcher (the `spurgen` console script or `python -m spurgen`), make
    __main__ look like `python -m <module>` (None: leave it).

    Lightning's DDP launcher starts ranks 1.. with `python -m <__main__.__spec__.name> <argv[1:]>`, or, when the
    program has no spec (a console script), with `python <argv[0]> ...`. From the dispatcher neither works:
    argv[0] is 'spurgen run' while the command runs (cli/common.py run_main), and `python -m spurgen` would
    take the first override for the command's name. Only the dispatcher's __main__ is changed, and it is
    restored afterwards.
    """
    entry = sys.modules.get("__main__")
    before = getattr(entry, "__spec__", None)
    changed = (
        module is not None and entry is not None and (before is None or before.name == "spurgen.__main__")
    )
    if changed:
        entry.__spec__ = importlib.util.find_spec(module)
    try:
        yield
    finally:
        if changed:
            entry.__spec__ = before
