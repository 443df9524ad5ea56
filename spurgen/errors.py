"""User-facing errors: caught at the entry points and printed as one short message (exit code 2)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


class SpurgenError(Exception):
    """A mistake in the user's input or environment, explained in plain words; never a bug."""

    exit_code = 2


class ConfigError(SpurgenError):
    """An invalid configuration value; the message names the key."""

    def __init__(self, key: str, message: str):
        self.key = key
        super().__init__(f"config key '{key}': {message}")


class MissingWeightsError(SpurgenError):
    """Model weights that are not on disk and cannot be downloaded (offline)."""


class Problems:
    """Collects user mistakes instead of stopping at the first, so one message lists them all."""

    def __init__(self) -> None:
        self.errors: list[SpurgenError] = []

    @property
    def messages(self) -> list[str]:
        return [str(e) for e in self.errors]

    def attempt(self, fn: Callable[..., T], *args: Any) -> T | None:
        """fn(*args), or None with its SpurgenError recorded."""
        try:
            return fn(*args)
        except SpurgenError as exc:
            self.errors.append(exc)
            return None

    def raise_any(self) -> None:
        """Nothing, one error as itself, or one error listing all (a ConfigError naming the first key when
        every problem is a config key)."""
        if len(self.errors) == 1:
            raise self.errors[0]
        if not self.errors:
            return
        text = f"{len(self.errors)} problems: " + "; ".join(self.messages)
        if all(isinstance(e, ConfigError) for e in self.errors):
            err = ConfigError(self.errors[0].key, "")  # type: ignore[attr-defined]
            err.args = (text,)
            err.keys = [e.key for e in self.errors]  # type: ignore[attr-defined]
            raise err
        raise SpurgenError(text)
