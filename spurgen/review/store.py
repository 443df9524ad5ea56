"""The answers of human reviewers, in SQLite (WAL mode): one row per answer, committed before the HTTP
response acknowledges it, so killing the server loses no acknowledged answer (docs/review.md).

An answer row holds the reviewer, the time, the image's content hash, its set, the question and the answer.
The answers a reviewer gives to one image in one submit share a submission id; undo retracts the reviewer's
last submission (its rows stay, marked retracted, so the database keeps everything that was said). A client
nonce per submission makes a retried POST a no-op instead of a second copy. A reviewer has at most one standing
submission per image: a second one (another tab, another device) is refused with DuplicateAnswer, so one
reviewer is never two votes.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from spurgen.errors import SpurgenError

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS submissions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    reviewer TEXT NOT NULL,
    nonce TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    set_name TEXT NOT NULL,
    file TEXT NOT NULL,
    time TEXT NOT NULL,
    retracted INTEGER NOT NULL DEFAULT 0,
    UNIQUE (reviewer, nonce)
);
CREATE TABLE IF NOT EXISTS answers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    submission INTEGER NOT NULL REFERENCES submissions(id),
    reviewer TEXT NOT NULL,
    time TEXT NOT NULL,
    image_hash TEXT NOT NULL,
    set_name TEXT NOT NULL,
    file TEXT NOT NULL,
    question TEXT NOT NULL,
    answer TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_by_image ON answers(image_hash);
CREATE INDEX IF NOT EXISTS submissions_by_reviewer ON submissions(reviewer, retracted);
"""

ANSWER_FIELDS = ["reviewer", "time", "image_hash", "set_name", "file", "question", "answer", "submission"]


class DuplicateAnswer(SpurgenError):
    """The reviewer already has a standing answer to this image (a second tab or device): one reviewer, one
    vote. The page gets 409."""


class ImageRef(NamedTuple):
    """What a row records of an image: its content hash, its set and its file name in the set's folder."""

    hash: str
    set_name: str
    file: str


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class ReviewStore:
    """One SQLite database of answers; safe to share between the server's threads (one lock, one
    connection). Every write is its own committed transaction with synchronous=FULL."""

    def __init__(self, path: str | Path, mode: str | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.executescript(SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise SpurgenError(f"cannot open review database {self.path}: {exc}") from None
        self.mode = self._meta_once("mode", mode or "review")
        if mode is not None and self.mode != mode:
            raise SpurgenError(
                f"{self.path} is a {self.mode} database, not a {mode} one: choose another --db"
            )
        self.salt = self._meta_once("salt", secrets.token_hex(16))

    def _meta_once(self, key: str, value: str) -> str:
        """The stored value of key, or value stored now (so a database keeps its first mode and salt)."""
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES (?, ?)", (key, value))
            return self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0]

    def record_questions(self, questions: list[dict]) -> None:
        """Keep the questions the server asks (merged by key with those recorded before, the latest definition
        winning): the export tells free text from choices by them."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT value FROM meta WHERE key = 'questions'").fetchone()
                known = {q["key"]: q for q in json.loads(row[0])} if row else {}
                known.update({q["key"]: q for q in questions})
                self._db.execute(
                    "INSERT INTO meta(key, value) VALUES ('questions', ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    (json.dumps(list(known.values())),),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def questions(self) -> list[dict] | None:
        """The questions recorded by record_questions (None for a database written before they were)."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'questions'").fetchone()
        return json.loads(row[0]) if row else None

    def journal_mode(self) -> str:
        with self._lock:
            return self._db.execute("PRAGMA journal_mode").fetchone()[0]

    def add(self, reviewer: str, image: ImageRef, answers: dict[str, str], nonce: str) -> int:
        """Store one submission (the answers to one image) and commit; return its id. The same (reviewer,
        nonce) again returns the first submission's id and writes nothing; a second standing submission of
        the reviewer for the image raises DuplicateAnswer. Both checks run inside the write transaction, so
        they hold across threads and across processes sharing the file."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                sid = self._insert(reviewer, image, answers, nonce)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return sid

    def _insert(self, reviewer: str, image: ImageRef, answers: dict[str, str], nonce: str) -> int:
        known = self._db.execute(
            "SELECT id FROM submissions WHERE reviewer = ? AND nonce = ?", (reviewer, nonce)
        ).fetchone()
        if known:
            return int(known[0])
        standing = self._db.execute(
            "SELECT id FROM submissions WHERE reviewer = ? AND image_hash = ? AND retracted = 0",
            (reviewer, image.hash),
        ).fetchone()
        if standing:
            raise DuplicateAnswer(f"{reviewer} already answered this image (undo first to change the answer)")
        now = _now()
        cur = self._db.execute(
            "INSERT INTO submissions(reviewer, nonce, image_hash, set_name, file, time) VALUES (?,?,?,?,?,?)",
            (reviewer, nonce, *image, now),
        )
        sid = int(cur.lastrowid)
        self._db.executemany(
            "INSERT INTO answers(submission, reviewer, time, image_hash, set_name, file, question, answer) "
            "VALUES (?,?,?,?,?,?,?,?)",
            [(sid, reviewer, now, *image, q, a) for q, a in answers.items()],
        )
        return sid

    def undo(self, reviewer: str) -> str | None:
        """Retract the reviewer's last standing submission; return its image hash (None: nothing to undo)."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, image_hash FROM submissions WHERE reviewer = ? AND retracted = 0 "
                "ORDER BY id DESC LIMIT 1",
                (reviewer,),
            ).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE submissions SET retracted = 1 WHERE id = ?", (row[0],))
            return str(row[1])

    def answered_by(self, reviewer: str) -> set[str]:
        """Image hashes the reviewer has a standing submission for."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT image_hash FROM submissions WHERE reviewer = ? AND retracted = 0",
                (reviewer,),
            ).fetchall()
        return {r[0] for r in rows}

    def reviewer_counts(self) -> dict[str, int]:
        """image hash -> how many distinct reviewers have a standing submission for it."""
        with self._lock:
            rows = self._db.execute(
                "SELECT image_hash, COUNT(DISTINCT reviewer) FROM submissions WHERE retracted = 0 "
                "GROUP BY image_hash"
            ).fetchall()
        return {h: int(n) for h, n in rows}

    def answers(self) -> list[dict]:
        """Every standing answer row (retracted submissions left out), oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT a.reviewer, a.time, a.image_hash, a.set_name, a.file, a.question, a.answer, a.submission "
                "FROM answers a JOIN submissions s ON s.id = a.submission WHERE s.retracted = 0 "
                "ORDER BY a.id"
            ).fetchall()
        return [dict(zip(ANSWER_FIELDS, r, strict=True)) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_existing(path: str | Path) -> ReviewStore:
    """A database that must already exist (the export reads it; it never creates one)."""
    if not Path(path).is_file():
        raise SpurgenError(f"review database {path} does not exist")
    return ReviewStore(path)
