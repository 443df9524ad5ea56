"""Prompts shared by training, its validation samples and generation (METHOD.md, 'Training' and 'Evaluation')."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

PLACEHOLDER = "{prompt}"


def negative_prompt(target: Mapping[str, Any] | None) -> str | None:
    """The class name and its synonyms, each once ("koala, koala bear, ..."), so generated images avoid
    showing the class object (METHOD.md); None when no class name is known."""
    if target is None or not target.get("name"):
        return None
    return ", ".join(dict.fromkeys([target["name"], *(target.get("synonyms") or [])]))


def apply_template(template: str, prompt: str) -> str:
    """'{prompt} on the beach' + 'a photo of a sks flower' -> 'a photo of a sks flower on the beach'."""
    return template.replace(PLACEHOLDER, prompt)
