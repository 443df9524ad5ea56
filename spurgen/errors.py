"""User-facing errors: caught at the entry points and printed as one short message (exit code 2)."""

from __future__ import annotations


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
