"""What a review or study asks and how it runs: questions from a YAML file (--config) or the defaults below,
checked at start-up so a bad file fails in one line naming the key."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from spurgen.errors import ConfigError, SpurgenError

# a question: key (the database's `question`), text, choices (None: free text), required
REVIEW_QUESTIONS: list[dict] = [
    {"key": "spurious_feature", "text": "Shows the spurious feature?", "choices": ["yes", "no"]},
    {"key": "class_object", "text": "Shows the class object?", "choices": ["yes", "no", "unsure"]},
    {"key": "note", "text": "Note", "choices": None, "required": False},
]
STUDY_QUESTIONS: list[dict] = [
    {"key": "real_or_generated", "text": "Real or generated?", "choices": ["real", "generated"]},
    {
        "key": "realism",
        "text": "How realistic? (1 = clearly fake, 5 = indistinguishable from a photo)",
        "choices": ["1", "2", "3", "4", "5"],
    },
]
MAX_NOTE = 2000
LOOPBACK_NAMES = {"localhost"}


@dataclass
class ReviewConfig:
    mode: str = "review"  # review | study
    questions: list[dict] = field(default_factory=list)
    min_reviewers_per_image: int = 2
    seed: int = 0
    show_predictions: bool = False  # review mode only: predictions could anchor the class-object answer
    image_size: int = 256  # study mode: every image re-encoded to this square size
    token: str | None = None
    allowed_hosts: list[str] | None = None  # Host headers accepted (None: any); loopback binds refuse others


def allowed_hosts(host: str) -> list[str] | None:
    """For a server on a loopback address (127.0.0.1, any 127.x, ::1 or localhost), the Host names a browser
    uses for it: a web page elsewhere that rebinds its own name to loopback (DNS rebinding) is refused. An
    IPv6 literal is bracketed, as it is in a Host header ([::1]:8080). None (any) for other binds."""
    if not is_loopback(host):
        return None
    own = f"[{host}]" if ":" in host else host.lower()
    return list(dict.fromkeys(["127.0.0.1", "localhost", "[::1]", own]))


def check_questions(questions: list[dict]) -> list[dict]:
    """Normalised questions (required defaults to True for choices, False for free text)."""
    if not questions:
        raise ConfigError("questions", "at least one question is needed")
    out, seen = [], set()
    for i, q in enumerate(questions):
        key = q.get("key") if isinstance(q, dict) else None
        if not isinstance(key, str) or not key.isidentifier() or key in seen:
            raise ConfigError(f"questions[{i}].key", f"a unique identifier is needed, got {key!r}")
        choices = q.get("choices")
        if choices is not None and (not choices or not all(isinstance(c, str | int) for c in choices)):
            raise ConfigError(f"questions[{i}].choices", "a non-empty list of strings, or null for free text")
        if choices is not None and any(isinstance(c, bool) for c in choices):
            raise ConfigError(
                f"questions[{i}].choices", "YAML reads yes/no/on/off as booleans: quote them ('yes')"
            )
        seen.add(key)
        out.append(
            {
                "key": key,
                "text": str(q.get("text", key)),
                "choices": [str(c) for c in choices] if choices is not None else None,
                "required": bool(q.get("required", choices is not None)),
            }
        )
    return out


def load_questions(path: str | Path | None, mode: str) -> list[dict]:
    """Questions from a YAML file's `questions:` list, else the mode's defaults."""
    if path is None:
        return check_questions(REVIEW_QUESTIONS if mode == "review" else STUDY_QUESTIONS)
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(Path(path)))
    except (OSError, ValueError) as exc:
        raise SpurgenError(f"cannot read review config {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
        raise ConfigError("questions", f"{path} must hold a list under `questions:`")
    return check_questions(data["questions"])


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """An access token is required whenever the server binds to anything but loopback."""
    if not is_loopback(host) and not token:
        raise SpurgenError(f"--host {host} is not loopback: give an access token with --token")
    if token is not None and len(token) < 8:
        raise SpurgenError("--token must be at least 8 characters")


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "true/false"
    return {dict: "an object", list: "a list", int: "a number", float: "a number"}.get(type(value), "null")


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check_answers(questions: list[dict], answers: object) -> dict[str, str]:
    """The submitted answers as {key: text}, or a SpurgenError naming what is wrong (a 400 for the page)."""
    if not isinstance(answers, dict):
        raise SpurgenError("answers must be an object {question: answer}")
    known = {q["key"]: q for q in questions}
    unknown = sorted(set(answers) - set(known))
    if unknown:
        raise SpurgenError(f"unknown question {unknown[0]!r}")
    out = {}
    for key, q in known.items():
        value = answers.get(key)
        if value is None or value == "":
            if q["required"]:
                raise SpurgenError(f"question {key!r} needs an answer")
            continue
        if not isinstance(value, str):
            raise SpurgenError(f"question {key!r}: answer must be a string, got {_json_type(value)}")
        if not _utf8(value):
            raise SpurgenError(f"question {key!r}: answer is not valid Unicode (a lone surrogate)")
        if q["choices"] is not None and value not in q["choices"]:
            raise SpurgenError(f"question {key!r}: answer must be one of {', '.join(q['choices'])}")
        if len(value) > MAX_NOTE:
            raise SpurgenError(f"question {key!r}: answer longer than {MAX_NOTE} characters")
        out[key] = value
    return out
