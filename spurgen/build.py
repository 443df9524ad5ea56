"""Objects from config (`_target_`), with user errors surfacing as themselves, not wrapped by Hydra."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from spurgen.errors import SpurgenError


def build(node: Any, **kwargs: Any) -> Any:
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, SpurgenError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
