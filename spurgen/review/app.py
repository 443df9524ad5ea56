"""The review web app (Starlette): one page, a small JSON API, and images served by opaque id only.

    GET  /                    the page (spurgen/review/page.py)
    GET  /api/state?reviewer= the reviewer's next image, the questions and their progress
    POST /api/answer          {reviewer, image, answers, nonce}: stored and committed, then acknowledged;
                              409 when the reviewer already answered the image (one reviewer, one vote)
    POST /api/undo            {reviewer}: retract the reviewer's last answer
    GET  /image/<id>          the image (study mode: re-encoded, blinded)

Every error is JSON {"error": message} with a 4xx status (5xx only for a bug, without a traceback).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
import traceback
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from spurgen.errors import SpurgenError
from spurgen.review import blind, order
from spurgen.review.config import ReviewConfig, check_answers
from spurgen.review.items import DECODE_ERRORS, Item, bytes_hash, inside
from spurgen.review.page import page_html
from spurgen.review.store import DuplicateAnswer, ReviewStore

REVIEWER = re.compile(r"^[\w.@ -]{1,64}$")
IMAGE_ID = re.compile(r"^[0-9a-f]{20}$")
NONCE = re.compile(r"^[\w-]{1,64}$")
MAX_BODY = 64 * 1024
BODY_TIMEOUT = 10.0  # seconds for a whole request body to arrive
CHANGED = "the image file changed since start-up (restart the review to include it again)"


@dataclass
class Review:
    """What the app serves: the configuration, the images and the store."""

    cfg: ReviewConfig
    items: list[Item]
    store: ReviewStore
    by_id: dict[str, Item] = field(init=False)
    by_hash: dict[str, Item] = field(init=False)
    _orders: dict[str, list[str]] = field(default_factory=dict)
    _blinded: dict[str, bytes] = field(default_factory=dict)
    _changed: set[str] = field(default_factory=set)  # hashes of items whose file changed since start-up

    def __post_init__(self) -> None:
        self.by_id = {i.id: i for i in self.items}
        self.by_hash = {i.hash: i for i in self.items}

    def queue(self, reviewer: str) -> tuple[list[str], int]:
        """(the reviewer's remaining image hashes, next first; how many they have answered)."""
        if reviewer not in self._orders:
            self._orders[reviewer] = order.reviewer_order(list(self.by_hash), reviewer, self.cfg.seed)
        mine = self.store.answered_by(reviewer) & set(self.by_hash)
        left = order.queue(
            self._orders[reviewer], mine, self.store.reviewer_counts(), self.cfg.min_reviewers_per_image
        )
        return [h for h in left if h not in self._changed], len(mine)

    def state(self, reviewer: str, first: str | None = None) -> dict:
        """What the page shows the reviewer next; `first` (the image hash just undone) comes first, even if
        others have since given it enough reviewers, so the reviewer can answer it again. An image whose
        file changed since start-up is dropped."""
        left, done = self.queue(reviewer)
        if first in self.by_hash and first not in self._changed:
            left = [first, *(h for h in left if h != first)]
        while left and not self.unchanged(self.by_hash[left[0]]):
            left = left[1:]
        item = self.by_hash[left[0]] if left else None
        shown = None
        if item is not None:
            shown = {"id": item.id, "url": f"/image/{item.id}"}
            if self.cfg.mode == "review":
                info = dict(item.info)
                if not self.cfg.show_predictions:
                    info.pop("predictions", None)
                shown.update(info)
        return {
            "mode": self.cfg.mode,
            "reviewer": reviewer,
            "questions": self.cfg.questions,
            "image": shown,
            "progress": {"done": done, "total": done + len(left)},
        }

    def unchanged(self, item: Item) -> bool:
        """False (and the item never offered again) once its file's size, mtime or place has changed."""
        if item.hash not in self._changed and not item.unchanged():
            self._drop(item)
        return item.hash not in self._changed

    def _drop(self, item: Item) -> None:
        if item.hash not in self._changed:
            self._changed.add(item.hash)
            print(f"spurgen review: {item.path} changed since start-up; no longer offered", file=sys.stderr)

    def image_bytes(self, item: Item) -> tuple[bytes, str]:
        """The image as read at start-up: its bytes must still hash to the item's hash (410 otherwise); study
        mode re-encodes them (blind.py)."""
        if item.id in self._blinded:
            return self._blinded[item.id], blind.MEDIA_TYPE
        if not inside(item.path, item.root):  # the file was swapped for a symlink out after start-up
            raise HTTPException(404, "image not found")
        try:
            data = item.path.read_bytes()
        except OSError:
            data = b""
        if bytes_hash(data) != item.hash:
            self._drop(item)
            raise HTTPException(410, CHANGED)
        if self.cfg.mode == "study":
            try:
                self._blinded[item.id] = blind.reencode(data, self.cfg.image_size)
            except DECODE_ERRORS:  # the same bytes decoded at start-up; kept for safety
                raise HTTPException(410, CHANGED) from None
            return self._blinded[item.id], blind.MEDIA_TYPE
        return data, item.media


def _reviewer(value: object) -> str:
    if not isinstance(value, str) or not REVIEWER.fullmatch(value.strip() or "-!"):
        raise HTTPException(400, "reviewer: 1-64 letters, digits, spaces or . @ _ - are needed")
    return value.strip()


def _closing(status: int, message: str) -> HTTPException:
    """An error sent before the body was read to its end: the connection is closed after it."""
    return HTTPException(status, message, headers={"Connection": "close"})


async def _read_body(request: Request, timeout: float) -> bytes:
    """The body, read as it streams in: a declared length over MAX_BODY is refused before anything is read,
    the running size is checked chunk by chunk (a chunked body has no length), and the whole body must
    arrive within `timeout` seconds (a client that declares 100 bytes and sends 1 gets 408, not a hung
    connection)."""
    declared = request.headers.get("content-length")
    if declared is not None and not declared.isdigit():
        raise _closing(400, "Content-Length is not a number")
    if declared is not None and (len(declared) > 12 or int(declared) > MAX_BODY):
        raise _closing(413, f"request body over {MAX_BODY} bytes")
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > MAX_BODY:
                raise _closing(413, f"request body over {MAX_BODY} bytes")

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise _closing(408, f"the request body did not arrive within {timeout:g} s") from None
    except ClientDisconnect:
        raise _closing(400, "the client closed the connection mid-body") from None
    return bytes(body)


async def _json_body(request: Request, fields: tuple[str, ...], timeout: float) -> dict:
    """The body as a JSON object holding no field but `fields`; every fault is a 4xx naming it."""
    # a cross-site form can post text/plain without a CORS preflight; application/json cannot
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "application/json":
        raise _closing(415, "send the body as Content-Type: application/json")
    body = await _read_body(request, timeout)
    try:
        data = json.loads(body.decode("utf-8") or "null")  # JSON on the wire is UTF-8 (RFC 8259)
    except UnicodeDecodeError:
        raise HTTPException(400, "the request body is not UTF-8") from None
    except RecursionError:
        raise HTTPException(400, "the request body is nested too deeply") from None
    except ValueError:  # JSONDecodeError, and numbers past Python's digit limit
        raise HTTPException(400, "the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise HTTPException(400, "the request body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise HTTPException(400, f"unknown field {unknown[0]!r} (expected {', '.join(fields)})")
    return data


def _image(review: Review, value: object) -> Item:
    if not isinstance(value, str):
        raise HTTPException(400, "image: an image id (a string of 20 hex characters) is needed")
    item = review.by_id.get(value)
    if item is None:
        raise HTTPException(404, "unknown image id")
    return item


def build_app(review: Review, body_timeout: float = BODY_TIMEOUT) -> Starlette:
    """The Starlette app of one review (the token, when set, is checked on every request); a request body
    must arrive within body_timeout seconds."""

    async def index(request: Request) -> Response:
        return HTMLResponse(page_html(review.cfg.mode), headers={"Cache-Control": "no-store"})

    async def state(request: Request) -> Response:
        reviewer = _reviewer(request.query_params.get("reviewer"))
        return JSONResponse(await run_in_threadpool(review.state, reviewer))

    async def answer(request: Request) -> Response:
        data = await _json_body(request, ("reviewer", "image", "answers", "nonce"), body_timeout)
        reviewer = _reviewer(data.get("reviewer"))
        item = _image(review, data.get("image"))
        if not await run_in_threadpool(review.unchanged, item):  # not taken: the page moves on
            body = await run_in_threadpool(review.state, reviewer)
            return JSONResponse({"error": CHANGED, **body}, status_code=410)
        nonce = data.get("nonce")
        if not isinstance(nonce, str) or not NONCE.fullmatch(nonce):
            raise HTTPException(400, "nonce: 1-64 letters, digits, _ or - are needed")
        try:
            answers = check_answers(review.cfg.questions, data.get("answers"))
        except SpurgenError as exc:
            raise HTTPException(400, str(exc)) from None
        try:
            sid = await run_in_threadpool(review.store.add, reviewer, item.ref, answers, nonce)
        except DuplicateAnswer as exc:  # another tab of this reviewer answered it: show what is next
            body = await run_in_threadpool(review.state, reviewer)
            return JSONResponse({"error": str(exc), **body}, status_code=409)
        body = await run_in_threadpool(review.state, reviewer)
        return JSONResponse({"saved": sid, **body})

    async def undo(request: Request) -> Response:
        reviewer = _reviewer((await _json_body(request, ("reviewer",), body_timeout)).get("reviewer"))
        undone = await run_in_threadpool(review.store.undo, reviewer)
        body = await run_in_threadpool(review.state, reviewer, undone)
        return JSONResponse(
            {"undone": review.by_hash[undone].id if undone in review.by_hash else None, **body}
        )

    async def image(request: Request) -> Response:
        ident = request.path_params["ident"]
        if not IMAGE_ID.fullmatch(ident):
            raise HTTPException(400, "images are served by id only (20 hex characters), never by path")
        item = review.by_id.get(ident)
        if item is None:
            raise HTTPException(404, "image not found")
        data, media = await run_in_threadpool(review.image_bytes, item)
        return Response(data, media_type=media, headers={"Cache-Control": "private, max-age=3600"})

    routes = [
        Route("/", index),
        Route("/api/state", state),
        Route("/api/answer", answer, methods=["POST"]),
        Route("/api/undo", undo, methods=["POST"]),
        Route("/image/{ident:path}", image),
    ]
    return Starlette(
        routes=routes,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=review.cfg.allowed_hosts or ["*"]),
            Middleware(TokenMiddleware, token=review.cfg.token),
        ],
        exception_handlers={HTTPException: _http_error, Exception: _server_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if exc.status_code != 404 or exc.detail != "Not Found" else "no such page"
    return JSONResponse({"error": detail}, status_code=exc.status_code, headers=exc.headers)


async def _server_error(request: Request, exc: Exception) -> Response:
    traceback.print_exception(exc, file=sys.stderr)  # for the operator's terminal, never the page
    return JSONResponse({"error": "internal error (the server's log has the details)"}, status_code=500)


class TokenMiddleware(BaseHTTPMiddleware):
    """With a token: every request must carry it (?token=... or the X-Review-Token header), else 403."""

    def __init__(self, app, token: str | None = None):  # type: ignore[no-untyped-def]
        super().__init__(app)
        self.token = token

    async def dispatch(self, request: Request, call_next):  # type: ignore[no-untyped-def]
        if self.token:
            given = request.headers.get("x-review-token") or request.query_params.get("token") or ""
            if not secrets.compare_digest(given.encode(), self.token.encode()):
                return JSONResponse({"error": "access token missing or wrong (?token=...)"}, status_code=403)
        return await call_next(request)
