"""`spurgen review <run folder or image folder>` serves the review page; `spurgen review export <db>` writes the
answers and their summary; `spurgen review filter <db> <folder> --out DIR` keeps the accepted images. Also
`python -m spurgen.review ...` (docs/review.md)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from spurgen.errors import SpurgenError

if TYPE_CHECKING:
    from spurgen.review.app import Review


def serve_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve a page for people to review images (docs/review.md).",
        epilog=f"also: {prog} export <db> [--out DIR]; {prog} filter <db> <folder> --out DIR",
    )
    p.add_argument("folder", help="a run folder (its generated/) or a folder of images")
    p.add_argument("--mode", choices=["review", "study"], default="review")
    p.add_argument("--set", action="append", default=[], metavar="NAME=DIR", help="add an image set")
    p.add_argument("--db", help="SQLite file (default <folder>/review/<mode>.sqlite)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--token", help="access token; required unless --host is loopback")
    p.add_argument("--config", help="YAML file with a `questions:` list (default: the mode's questions)")
    p.add_argument("--min-reviewers", type=int, default=2, help="min_reviewers_per_image (default 2)")
    p.add_argument("--seed", type=int, default=0, help="base seed of the per-reviewer orders")
    p.add_argument("--show-predictions", action="store_true", help="review mode: classifiers' top-3")
    p.add_argument("--image-size", type=int, default=256, help="study mode: re-encoded square size")
    p.add_argument(
        "--unreadable",
        choices=["skip", "refuse"],
        default="skip",
        help="files that do not decode as images: skip them (listed in one line) or refuse to start",
    )
    return p


def export_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} export", description="Answers as CSV plus a summary.")
    p.add_argument("db", help="the review's SQLite file")
    p.add_argument("--out", help="output folder (default: beside the database)")
    p.add_argument("--min-votes", type=int, default=2, help="accepted.jsonl: votes needed per image")
    p.add_argument("--logger", choices=["none", "wandb"], default="none", help="wandb: upload the summary")
    p.add_argument("--wandb-project", default="spurgen")
    p.add_argument("--wandb-mode", default="auto", choices=["auto", "online", "offline", "disabled"])
    return p


def filter_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} filter", description="Copy the images reviewers accepted.")
    p.add_argument("db", help="the review's SQLite file")
    p.add_argument(
        "folder", help="the reviewed images: a run's generated/ or a `spurgen export` dataset folder"
    )
    p.add_argument("--out", required=True, help="the new dataset folder")
    p.add_argument("--min-votes", type=int, default=2, help="votes an image needs (default 2)")
    return p


def _sets(specs: list[str]) -> dict[str, str]:
    out = {}
    for spec in specs:
        name, sep, folder = spec.partition("=")
        if not sep or not name.isidentifier() or not folder:
            raise SpurgenError(f"--set {spec!r}: expected NAME=DIR")
        out[name] = folder
    return out


def _skipped(files: list[Path], refuse: bool) -> None:
    """Files that do not decode as images: one line on stderr, or a refusal with --unreadable refuse."""
    if not files:
        return
    names = ", ".join(f"{p.parent.name}/{p.name}" for p in files[:5])
    more = f" and {len(files) - 5} more" if len(files) > 5 else ""
    what = f"{len(files)} file{'s' if len(files) > 1 else ''} that do not decode as images: {names}{more}"
    if refuse:
        raise SpurgenError(f"{what} (--unreadable skip leaves them out)")
    print(f"spurgen review: skipped {what}", file=sys.stderr)


def build_review(args: argparse.Namespace, check_port: bool = False) -> Review:
    """The Review an argument list describes. Everything is checked (and, with check_port, the port tried)
    before the database is opened, so a refusal leaves no file behind."""
    from spurgen.review.app import Review
    from spurgen.review.config import ReviewConfig, allowed_hosts, check_binding, load_questions
    from spurgen.review.items import assign_ids, load_items, resolve_sets
    from spurgen.review.store import ReviewStore

    if args.host.startswith("[") and args.host.endswith("]"):  # [::1], as written in a URL
        args.host = args.host[1:-1]
    check_binding(args.host, args.token)
    if not 0 <= args.port <= 65535:
        raise SpurgenError(f"--port must be in 0..65535, got {args.port}")
    if args.min_reviewers < 1 or not 16 <= args.image_size <= 4096:
        raise SpurgenError("--min-reviewers must be >= 1 and --image-size in 16..4096")
    study = args.mode == "study"
    if study and args.show_predictions:
        raise SpurgenError("--show-predictions is not allowed in study mode (it would unblind it)")
    cfg = ReviewConfig(
        mode=args.mode,
        questions=load_questions(args.config, args.mode),
        min_reviewers_per_image=args.min_reviewers,
        seed=args.seed,
        show_predictions=args.show_predictions,
        image_size=args.image_size,
        token=args.token,
        allowed_hosts=allowed_hosts(args.host),
    )
    sets = resolve_sets(args.folder, _sets(args.set), study)
    items, skipped = load_items(sets, args.show_predictions)
    _skipped(skipped, args.unreadable == "refuse")
    if not items:
        raise SpurgenError("no images to review in " + ", ".join(str(f) for f in sets.values()))
    if check_port:
        _check_port_free(args.host, args.port)
    db = Path(args.db) if args.db else Path(args.folder) / "review" / f"{args.mode}.sqlite"
    store = ReviewStore(db, mode=args.mode)
    store.record_questions(cfg.questions)
    return Review(cfg, assign_ids(items, store.salt), store)


def listen_family(host: str) -> int:
    """AF_INET6 for an IPv6 address (::1, ::, [::1]), else AF_INET (IPv4 addresses and host names)."""
    import socket

    return socket.AF_INET6 if ":" in host else socket.AF_INET


def open_url(host: str, port: int, token: str | None) -> str:
    """The address to open; an IPv6 literal is bracketed (http://[::1]:8765/)."""
    name = f"[{host}]" if ":" in host else host
    return f"http://{name}:{port}/" + (f"?token={token}" if token else "")


def _check_port_free(host: str, port: int) -> None:
    """Bind once before uvicorn does: a port in use (another review running?) is one line, not its log."""
    import socket

    try:
        with socket.create_server((host, port), family=listen_family(host)):
            pass
    except OSError as exc:
        raise SpurgenError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc}); is another review running? choose another "
            "--port"
        ) from None


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from spurgen.review.app import build_app

    review = build_review(args, check_port=True)
    url = open_url(args.host, args.port, args.token)
    print(f"spurgen review: {len(review.items)} images, answers in {review.store.path}; open {url}")
    try:
        uvicorn.run(build_app(review), host=args.host, port=args.port, log_level="warning")
    finally:
        review.store.close()
    return 0


def export(args: argparse.Namespace) -> int:
    from spurgen.review.results import export_db

    wandb = (args.wandb_project, args.wandb_mode) if args.logger == "wandb" else None
    out = export_db(args.db, args.out, args.min_votes, wandb)
    print(f"spurgen review export: wrote {', '.join(str(p) for p in out)}")
    return 0


def filter_(args: argparse.Namespace) -> int:
    from spurgen.review.accept import filter_folder

    summary = filter_folder(args.db, args.folder, args.out, args.min_votes)
    print(f"spurgen review filter: {summary['num_accepted']} of {summary['num_images']} images -> {args.out}")
    return 0


def main(argv: list[str] | None = None, prog: str = "spurgen review") -> int:
    """Entry point; user mistakes print one line and return 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        if args and args[0] == "export":  # `logger=wandb`, as on spurgen's other commands, = --logger wandb
            rest = [f"--logger={a.split('=', 1)[1]}" if a.startswith("logger=") else a for a in args[1:]]
            return export(export_parser(prog).parse_args(rest))
        if args and args[0] == "filter":
            return filter_(filter_parser(prog).parse_args(args[1:]))
        return serve(serve_parser(prog).parse_args(args))
    except SpurgenError as exc:
        print(f"spurgen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0
