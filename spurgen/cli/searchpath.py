"""Users' own config folders: SPURGEN_CONFIG_PATH (os.pathsep-separated, laid out like conf/).

An installed spurgen cannot be written into, so a user's class/, model/, experiment/ ... files live in their own
folders. A Hydra SearchPathPlugin, registered in-process with `Plugins.instance().register`, puts those folders
in the search path of every composition of spurgen's config: the entry points, `--help`, `--info searchpath`,
multirun jobs and the compose API. It acts only when the primary config folder is spurgen's own, so another
Hydra app in the same process is left alone.

Order, like PATH: the folders come before the packaged conf, in the order listed, so a user's
`trainer/gpu.yaml` replaces the packaged one and `class/my_class.yaml` adds a class. Hydra's `--config-dir DIR`
keeps Hydra's meaning (searched after the packaged conf).
"""

from __future__ import annotations

import os
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.core.plugins import Plugins
from hydra.plugins.search_path_plugin import SearchPathPlugin

from spurgen.config import CONF_DIR
from spurgen.errors import SpurgenError

ENV_VAR = "SPURGEN_CONFIG_PATH"
PROVIDER = "spurgen-config-path"


def user_config_dirs() -> list[Path]:
    """The folders in SPURGEN_CONFIG_PATH, absolute, in order; a missing one is a SpurgenError naming it."""
    dirs = []
    for entry in os.environ.get(ENV_VAR, "").split(os.pathsep):
        if not entry.strip():  # a trailing or doubled separator
            continue
        path = Path(entry).expanduser().resolve()
        if not path.is_dir():
            raise SpurgenError(f"{ENV_VAR}: {entry} is not a folder (one laid out like conf/)")
        dirs.append(path)
    return dirs


def _is_spurgen_conf(path: str) -> bool:
    """Whether a search-path entry is spurgen's packaged config folder."""
    if path.startswith("pkg://"):
        return path.rstrip("/") == "pkg://spurgen.conf"
    path = path.removeprefix("file://")
    return Path(path).resolve() == Path(CONF_DIR).resolve()


class SpurgenConfigPath(SearchPathPlugin):
    """Puts SPURGEN_CONFIG_PATH's folders before spurgen's conf in Hydra's config search path."""

    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        main = SearchPathQuery(provider="main")
        index = search_path.find_first_match(main)
        if index < 0 or not _is_spurgen_conf(search_path.get_path()[index].path):
            return
        for folder in user_config_dirs():  # each lands just before main: the listed order is kept
            search_path.prepend(PROVIDER, f"file://{folder}", anchor=main)


def register_search_path() -> None:
    """Register the plugin with Hydra (idempotent); any later composition of spurgen's conf sees it."""
    Plugins.instance().register(SpurgenConfigPath)
