"""Human review (spurgen/review/): the SQLite store, per-reviewer orders and overlap, one vote per reviewer, the
HTTP API through a real client, refusals (paths, tokens, bad requests, non-images, changed files), study-mode
blinding, a real server killed with SIGKILL, IPv6 loopback, a bounded fuzz test of the write endpoints, and
the export of answers."""

from __future__ import annotations

import contextlib
import csv
import http.client
import io
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from spurgen.files import save_png_atomic, write_json, write_jsonl
from spurgen.review import order, results
from spurgen.review.app import build_app
from spurgen.review.cli import build_review, main, serve_parser
from spurgen.review.config import check_binding
from spurgen.review.store import ImageRef, ReviewStore

REPO = Path(__file__).resolve().parents[1]
BASE = "http://127.0.0.1"  # the Host a loopback server accepts
GOOD = {"spurious_feature": "yes", "class_object": "no", "note": "a bird feeder"}


def make_run(tmp_path: Path, n: int = 4) -> Path:
    """A run folder as spurgen leaves it: generated/ PNGs with prompt and seed in text chunks, manifest.jsonl,
    generate.json, and eval/predictions.jsonl (class 1 is the target)."""
    run = tmp_path / "run"
    gen = run / "generated"
    records, preds = [], []
    for i in range(n):
        im = Image.new("RGB", (64, 48), (40 * i, 100, 200 - 30 * i))
        name = f"{i:05d}.png"
        save_png_atomic(im, gen / name, {"prompt": f"a photo of a sks flower {i}", "seed": 1000 + i})
        records.append({"file": name, "prompt": f"a photo of a sks flower {i}", "template": "t{}", "seed": i})
        top = {"top5": [1, 2, 3, 4, 5] if i % 2 else [7, 1, 3, 4, 5], "top5_p": [0.5, 0.2, 0.1, 0.1, 0.1]}
        preds.append({"file": name, "classifiers": {"tiny_a": {**top, "p_target": 0.5}}})
    write_jsonl(gen / "manifest.jsonl", records)
    write_json(gen / "generate.json", {"class_index": 1})
    (run / "eval").mkdir()
    write_jsonl(run / "eval" / "predictions.jsonl", preds)
    return run


def make_review(run: Path, *extra: str):
    return build_review(serve_parser("spurgen review").parse_args([str(run), *extra]))


def client(run: Path, *extra: str) -> TestClient:
    return TestClient(build_app(make_review(run, *extra)), base_url=BASE, raise_server_exceptions=False)


def answer(c: TestClient, reviewer: str, image: str, answers=None, nonce: str = "n1", headers=None):
    body = {"reviewer": reviewer, "image": image, "answers": answers or GOOD, "nonce": nonce}
    return c.post("/api/answer", json=body, headers=headers or {})


def test_store_is_wal_and_keeps_answers_undo_and_retries(tmp_path):
    store = ReviewStore(tmp_path / "r.sqlite", mode="review")
    assert store.journal_mode() == "wal"
    ref = ImageRef("h1", "generated", "00000.png")
    sid = store.add("ann", ref, {"spurious_feature": "yes", "class_object": "no"}, "x1")
    assert store.add("ann", ref, {"spurious_feature": "no"}, "x1") == sid  # a retried POST writes nothing
    store.add("ann", ImageRef("h2", "generated", "00001.png"), {"spurious_feature": "no"}, "x2")
    assert store.answered_by("ann") == {"h1", "h2"} and store.reviewer_counts() == {"h1": 1, "h2": 1}
    assert store.undo("ann") == "h2" and store.answered_by("ann") == {"h1"}
    assert store.undo("bob") is None
    rows = store.answers()
    assert [(r["question"], r["answer"]) for r in rows] == [
        ("spurious_feature", "yes"),
        ("class_object", "no"),
    ]
    assert rows[0]["reviewer"] == "ann" and rows[0]["image_hash"] == "h1" and rows[0]["time"]
    salt = store.salt
    store.close()
    again = ReviewStore(tmp_path / "r.sqlite")
    assert again.salt == salt and again.mode == "review" and len(again.answers()) == 2
    again.close()
    with pytest.raises(Exception, match="is a review database, not a study one"):
        ReviewStore(tmp_path / "r.sqlite", mode="study")


def test_orders_are_seeded_per_reviewer():
    hashes = [f"{i:04x}" for i in range(30)]
    a = order.reviewer_order(hashes, "ann", 0)
    assert a == order.reviewer_order(list(reversed(hashes)), "ann", 0)  # stable, whatever the input order
    assert sorted(a) == sorted(hashes)
    assert a != order.reviewer_order(hashes, "bob", 0) and a != order.reviewer_order(hashes, "ann", 1)


def test_overlap_each_image_gets_min_reviewers_then_no_more(tmp_path):
    review = make_review(make_run(tmp_path, 3), "--min-reviewers", "2")
    c = TestClient(build_app(review), base_url=BASE)
    seen: dict[str, list[str]] = {}
    for who in ("ann", "bob", "cat"):
        for k in range(5):
            st = c.get("/api/state", params={"reviewer": who}).json()
            if st["image"] is None:
                break
            seen.setdefault(who, []).append(st["image"]["id"])
            assert answer(c, who, st["image"]["id"], nonce=f"{who}{k}").status_code == 200
    assert len(seen["ann"]) == 3 and len(seen["bob"]) == 3 and "cat" not in seen
    assert set(review.store.reviewer_counts().values()) == {2}
    # an image just undone comes back first, although others now have fewer reviewers
    fresh = make_review(make_run(tmp_path / "b", 3), "--min-reviewers", "2")
    c2 = TestClient(build_app(fresh), base_url=BASE)
    taken = c2.get("/api/state", params={"reviewer": "ann"}).json()["image"]["id"]
    answer(c2, "ann", taken, nonce="a")
    answer(c2, "bob", taken, nonce="b")  # 2 reviewers on it, 0 on the others
    back = c2.post("/api/undo", json={"reviewer": "ann"}).json()
    assert back["undone"] == back["image"]["id"] == taken and back["progress"] == {"done": 0, "total": 3}
    # with one image still short of reviewers, a newcomer gets exactly that one
    review.store.undo("bob")
    st = c.get("/api/state", params={"reviewer": "cat"}).json()
    assert st["image"]["id"] == seen["bob"][-1] and st["progress"] == {"done": 0, "total": 1}


def test_review_page_answer_progress_undo_and_resume(tmp_path):
    run = make_run(tmp_path)
    c = client(run)
    page = c.get("/")
    assert page.status_code == 200 and "<script>" in page.text and "keydown" in page.text
    st = c.get("/api/state", params={"reviewer": "ann"}).json()
    first = st["image"]
    assert st["progress"] == {"done": 0, "total": 4} and first["prompt"].startswith("a photo of a sks flower")
    assert first["template"] == "t{}" and "predictions" not in first  # off by default
    assert [q["key"] for q in st["questions"]] == ["spurious_feature", "class_object", "note"]
    img = c.get(first["url"])
    assert img.status_code == 200 and img.headers["content-type"] == "image/png"
    r = answer(c, "ann", first["id"]).json()
    assert r["progress"] == {"done": 1, "total": 4} and r["image"]["id"] != first["id"]
    answer(c, "ann", r["image"]["id"], nonce="n2")
    undone = c.post("/api/undo", json={"reviewer": "ann"}).json()
    assert undone["undone"] == r["image"]["id"] and undone["image"]["id"] == r["image"]["id"]
    c.close()
    resumed = client(run).get("/api/state", params={"reviewer": "ann"}).json()  # a new server, same db
    assert resumed["progress"]["done"] == 1 and resumed["image"]["id"] == r["image"]["id"]
    assert (run / "review" / "review.sqlite").is_file()


def test_predictions_shown_only_with_the_flag_target_marked(tmp_path):
    st = client(make_run(tmp_path), "--show-predictions").get("/api/state", params={"reviewer": "a"}).json()
    (pred,) = st["image"]["predictions"]
    assert pred["classifier"] == "tiny_a" and len(pred["top"]) == 3
    assert sum(t["target"] for t in pred["top"]) == 1  # class 1 is in every top-3 here


def test_paths_symlinks_and_absolute_paths_are_refused(tmp_path):
    run = make_run(tmp_path)
    outside = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(outside)
    (run / "generated" / "link.png").symlink_to(outside)
    review = make_review(run)
    assert len(review.items) == 4 and all(i.path.name != "link.png" for i in review.items)
    c = TestClient(build_app(review), base_url=BASE)
    for url in ("/image/..%2F..%2Fsecret.png", "/image/%2Fetc%2Fpasswd", "/image/generated/00000.png"):
        r = c.get(url)
        assert r.status_code == 400 and "by id only" in r.json()["error"], url
    for url in ("/image/../../secret.png", "/image/" + "0" * 20, "/etc/passwd"):
        r = c.get(url)
        assert r.status_code == 404 and r.json()["error"], url
    # a listed file swapped for a symlink out of its folder after start-up is not served
    victim = review.items[0]
    victim.path.unlink()
    victim.path.symlink_to(outside)
    assert c.get(f"/image/{victim.id}").status_code == 404


def test_token_required_off_loopback_and_checked(tmp_path, capsys):
    with pytest.raises(Exception, match="not loopback"):
        check_binding("0.0.0.0", None)
    check_binding("127.0.0.1", None)
    check_binding("::1", None)
    run = make_run(tmp_path)
    assert main([str(run), "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--token" in err
    c = client(run, "--token", "s3cret-token")
    assert c.get("/").status_code == 403 and "token" in c.get("/api/state?reviewer=a").json()["error"]
    assert c.get("/?token=wrong-token").status_code == 403
    assert c.get("/?token=s3cret-token").status_code == 200
    st = c.get("/api/state?reviewer=a", headers={"X-Review-Token": "s3cret-token"}).json()
    assert c.get(st["image"]["url"] + "?token=s3cret-token").status_code == 200


@pytest.mark.parametrize(
    "body, status, words",
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 400, "JSON object"),
        (json.dumps({"reviewer": "", "image": "x", "answers": {}, "nonce": "a"}).encode(), 400, "reviewer"),
        (
            json.dumps({"reviewer": "a", "image": "nope", "answers": GOOD, "nonce": "a"}).encode(),
            404,
            "unknown",
        ),
        (b"x" * 70000, 413, "bytes"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(tmp_path, body, status, words):
    r = client(make_run(tmp_path)).post(
        "/api/answer", content=body, headers={"Content-Type": "application/json"}
    )
    assert r.status_code == status and words in r.json()["error"] and "Traceback" not in r.text


@pytest.mark.parametrize(
    "answers, words",
    [
        ({"spurious_feature": "maybe", "class_object": "no"}, "must be one of yes, no"),
        ({"spurious_feature": "yes"}, "'class_object' needs an answer"),
        ({**GOOD, "colour": "red"}, "unknown question 'colour'"),
        ("yes", "answers must be an object"),
    ],
)
def test_bad_answers_are_refused_and_not_stored(tmp_path, answers, words):
    review = make_review(make_run(tmp_path))
    c = TestClient(build_app(review), base_url=BASE)
    r = answer(c, "ann", review.items[0].id, answers)
    assert r.status_code == 400 and words in r.json()["error"]
    assert review.store.answers() == []
    assert c.get("/api/undo").status_code == 405 and c.get("/api/state").status_code == 400


def test_study_mode_blinds_sets_to_one_size_and_format_without_metadata(tmp_path):
    run = make_run(tmp_path, 2)
    ref = tmp_path / "refs"
    ref.mkdir()
    Image.new("RGB", (120, 90), (9, 9, 9)).save(ref / "r.jpg", quality=70, comment=b"photographer")
    review = make_review(run, "--mode", "study", "--set", "reference=" + str(ref), "--image-size", "96")
    assert {i.set_name for i in review.items} == {"generated", "reference"}
    c = TestClient(build_app(review), base_url=BASE)
    st = c.get("/api/state", params={"reviewer": "ann"}).json()
    assert set(st["image"]) == {"id", "url"}  # no prompt, template, predictions or set name
    assert [q["key"] for q in st["questions"]] == ["real_or_generated", "realism"]
    for item in review.items:
        data = c.get(f"/image/{item.id}").content
        im = Image.open(io.BytesIO(data))
        assert im.format == "JPEG" and im.size == (96, 96) and im.mode == "RGB"
        assert not ({"prompt", "seed", "comment", "exif", "icc_profile"} & set(im.info)), im.info
        assert b"sks" not in data and b"photographer" not in data and item.id not in item.path.name
    assert main([str(run), "--mode", "study", "--show-predictions"]) == 2


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _has_ipv6_loopback() -> bool:
    try:
        _free_port("::1")
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1 cannot be bound)"
)


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _start_server(run: Path, db: Path, *extra: str, host: str = "127.0.0.1") -> tuple[subprocess.Popen, str]:
    """`python -m spurgen.review` on a free port of a loopback address; returns once it answers."""
    port = _free_port(host)
    cmd = [sys.executable, "-m", "spurgen.review", str(run), "--port", str(port), "--db", str(db), *extra]
    cmd += ["--host", host]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(f"{base}/", timeout=2).close()
            return proc, base
        except OSError:
            if proc.poll() is not None:
                raise AssertionError(proc.stderr.read().decode()) from None
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the review server did not start within 30 s")


def _get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def test_acknowledged_answer_survives_sigkill_of_the_server(tmp_path):
    db = tmp_path / "kill.sqlite"
    proc, base = _start_server(make_run(tmp_path), db)
    try:
        st = _get(f"{base}/api/state?reviewer=ann")
        body = {"reviewer": "ann", "image": st["image"]["id"], "answers": GOOD, "nonce": "k"}
        assert _post(f"{base}/api/answer", body)["saved"] >= 1
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    rows = sqlite3.connect(db).execute("SELECT reviewer, question, answer FROM answers").fetchall()
    assert sorted(rows) == sorted(("ann", q, a) for q, a in GOOD.items())


def _reviewer_loop(base: str, who: str, acked: list, stop: threading.Event) -> None:
    """Answer images until the server dies or `stop` is set; record (reviewer, nonce) of each acknowledged
    answer."""
    k = 0
    while not stop.is_set():
        try:
            st = _get(f"{base}/api/state?reviewer={who}")
            if st["image"] is None:
                return
            body = {"reviewer": who, "image": st["image"]["id"], "answers": GOOD, "nonce": f"{who}-{k}"}
            _post(f"{base}/api/answer", body)
        except (OSError, http.client.HTTPException):  # the server was killed: never acknowledged
            return
        acked.append((who, f"{who}-{k}"))
        k += 1


@pytest.mark.slow
def test_load_with_sigkill_keeps_every_acknowledged_answer_exactly_once(tmp_path):
    """Bounded load on loopback: 4 reviewers answer concurrently, the server is SIGKILLed mid-way; after a
    restart every acknowledged answer is in the database exactly once, and a retried POST adds nothing."""
    run, db = make_run(tmp_path, 40), tmp_path / "load.sqlite"
    proc, base = _start_server(run, db, "--min-reviewers", "4")
    acked: list = []
    stop = threading.Event()
    threads = [threading.Thread(target=_reviewer_loop, args=(base, f"r{i}", acked, stop)) for i in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while len(acked) < 40 and time.monotonic() < deadline:  # kill mid-way (160 answers in all)
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert 8 <= len(acked) < 160, f"{len(acked)} answers: the kill must come mid-way"
    proc, base = _start_server(run, db, "--min-reviewers", "4")
    try:
        con = sqlite3.connect(db)
        stored = con.execute(
            "SELECT reviewer, nonce, COUNT(*) FROM submissions GROUP BY reviewer, nonce"
        ).fetchall()
        per = dict(con.execute("SELECT submission, COUNT(*) FROM answers GROUP BY submission").fetchall())
        assert all(n == 1 for _, _, n in stored) and set(per.values()) == {len(GOOD)}
        assert set(acked) <= {(r, nonce) for r, nonce, _ in stored}
        who, nonce = acked[0]
        image = con.execute("SELECT image_hash FROM submissions WHERE nonce = ?", (nonce,)).fetchone()[0]
        ident = next(i.id for i in make_review(run, "--db", str(db)).items if i.hash == image)
        before = con.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
        _post(f"{base}/api/answer", {"reviewer": who, "image": ident, "answers": GOOD, "nonce": nonce})
        assert con.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == before
        done = {
            r: _get(f"{base}/api/state?reviewer={r}")["progress"]["done"] for r in ("r0", "r1", "r2", "r3")
        }
        assert all(done[r] >= sum(a == r for a, _ in acked) for r in done)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    _two_tabs_of_one_reviewer_accept_nothing(tmp_path / "tabs")


def _post_status(url: str, body: dict) -> int:
    """The HTTP status of a JSON POST (4xx included; a dead server raises OSError)."""
    try:
        _post(url, body)
        return 200
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code


def _tab(base: str, who: str, tab: str, acked: list, both: threading.Barrier) -> None:
    """One browser tab of `who`: both tabs load the state (the same image), then both submit it with their own
    nonce; round after round until nothing is left or the server dies."""
    k = 0
    try:
        while True:
            st = _get(f"{base}/api/state?reviewer={who}")
            both.wait(timeout=10)
            if st["image"] is None:
                return
            nonce = f"{tab}-{k}"
            body = {"reviewer": who, "image": st["image"]["id"], "answers": GOOD, "nonce": nonce}
            if _post_status(f"{base}/api/answer", body) == 200:
                acked.append(nonce)
            both.wait(timeout=10)
            k += 1
    except (OSError, http.client.HTTPException, threading.BrokenBarrierError):
        both.abort()  # the server was killed: the other tab stops too


def _two_tabs_of_one_reviewer_accept_nothing(tmp_path: Path) -> None:
    """The duplicate-vote case: one reviewer answers from two tabs at once, the server is SIGKILLed mid-way
    and restarted; each image holds at most one standing vote of that reviewer, every acknowledged answer
    is stored, and `export --min-votes 2` accepts nothing."""
    run, db = make_run(tmp_path, 20), tmp_path / "tabs.sqlite"
    proc, base = _start_server(run, db)
    acked: list = []
    both = threading.Barrier(2)
    tabs = [threading.Thread(target=_tab, args=(base, "solo", t, acked, both)) for t in ("tab1", "tab2")]
    for t in tabs:
        t.start()
    deadline = time.monotonic() + 10
    while len(acked) < 10 and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    for t in tabs:
        t.join(timeout=20)
    assert 4 <= len(acked) < 20, f"{len(acked)} answers: the kill must come mid-way"
    con = sqlite3.connect(db)
    votes = con.execute(
        "SELECT image_hash, COUNT(*) FROM submissions WHERE retracted = 0 GROUP BY reviewer, image_hash"
    ).fetchall()
    stored = {n for (n,) in con.execute("SELECT nonce FROM submissions")}
    con.close()
    assert votes and {n for _, n in votes} == {1} and set(acked) <= stored
    assert main(["export", str(db), "--out", str(tmp_path / "out"), "--min-votes", "2"]) == 0
    assert (tmp_path / "out" / "accepted.jsonl").read_text() == ""


def test_kappas_on_known_examples():
    assert results.cohen_kappa(["y", "y", "n", "n"], ["y", "y", "n", "n"]) == 1.0
    # p_o = 0.5, p_e = 0.5: no better than chance
    assert results.cohen_kappa(["y", "y", "n", "n"], ["y", "n", "y", "n"]) == 0.0
    # 3 items x 3 raters: P_i = 1, 1, 1/3 -> P_bar = 7/9; p = (5/9, 4/9) -> P_e = 41/81; kappa = 22/40
    assert results.fleiss_kappa([["a", "a", "a"], ["b", "b", "b"], ["a", "a", "b"]]) == pytest.approx(0.55)
    # agreement no better than the marginals: kappa 0
    assert results.fleiss_kappa([["a", "a", "a"], ["a", "a", "b"], ["b", "b", "a"]]) == pytest.approx(0.0)


def test_export_writes_answers_summary_and_accepted_images(tmp_path):
    review = make_review(make_run(tmp_path, 3))
    c = TestClient(build_app(review), base_url=BASE)
    a, b, x = review.items
    for who in ("ann", "bob"):
        answer(c, who, a.id, nonce="1")  # both accept a
        answer(c, who, b.id, {"spurious_feature": "yes", "class_object": "unsure"}, nonce="2")
    answer(c, "ann", x.id, nonce="3")  # one vote only
    db = review.store.path
    assert main(["export", str(db), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "review_summary.json").read_text())
    feat = summary["sets"]["generated"]["questions"]["spurious_feature"]
    assert feat["counts"] == {"yes": 5} and feat["fraction"]["yes"]["value"] == 1.0
    assert feat["fraction"]["yes"]["ci"][0] < 1.0
    # one vote per image (its majority answer): 3 images, not 5 answers, so the interval is wider
    assert feat["images"]["n"] == 3 and feat["images"]["counts"] == {"yes": 3}
    assert feat["images"]["fraction"]["yes"]["ci"][0] < feat["fraction"]["yes"]["ci"][0]
    obj = summary["sets"]["generated"]["questions"]["class_object"]["images"]
    assert obj["counts"] == {"no": 2, "unsure": 1}
    assert summary["agreement"]["class_object"] == {"method": "cohen", "kappa": 1.0, "num_images": 2}
    kept = [json.loads(line) for line in (tmp_path / "out" / "accepted.jsonl").read_text().splitlines()]
    assert [(k["image_hash"], k["file"], k["votes"]) for k in kept] == [(a.hash, a.path.name, 2)]
    csv_lines = (tmp_path / "out" / "answers.csv").read_text().splitlines()
    assert csv_lines[0].startswith("reviewer,time,image_hash") and len(csv_lines) == 1 + 13
    assert main(["export", str(tmp_path / "missing.sqlite")]) == 2


def test_filter_keeps_accepted_images_of_an_export_dataset_with_votes(tmp_path):
    run = make_run(tmp_path, 3)
    review = make_review(run)
    c = TestClient(build_app(review), base_url=BASE)
    a, b, x = review.items
    for who in ("ann", "bob", "cat"):
        answer(c, who, a.id, nonce="1")
    answer(c, "ann", b.id, {"spurious_feature": "yes", "class_object": "unsure"}, nonce="2")
    answer(c, "bob", b.id, nonce="2")  # 1 of 2 says no class object: no majority
    # a dataset folder as `spurgen export` writes it: images/ + manifest.jsonl naming images/<file>
    dataset = tmp_path / "dataset"
    (dataset / "images").mkdir(parents=True)
    for item in (a, b):
        (dataset / "images" / item.path.name).write_bytes(item.path.read_bytes())
    write_jsonl(dataset / "manifest.jsonl", [{"file": f"images/{a.path.name}", "prompt": "p", "votes": 2}])
    out = tmp_path / "kept"
    assert main(["filter", str(review.store.path), str(dataset), "--out", str(out), "--min-votes", "3"]) == 0
    (rec,) = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert rec["file"] == f"images/{a.path.name}" and rec["prompt"] == "p"
    assert rec["review"]["votes"] == 3 and rec["review"]["class_object"] == {"no": 3}
    assert sorted(p.name for p in (out / "images").iterdir()) == [a.path.name]
    assert json.loads((out / "dataset.json").read_text())["num_accepted"] == 1
    (out / "images" / "mine.txt").write_text("a file of the user's")
    assert main(["filter", str(review.store.path), str(dataset), "--out", str(out), "--min-votes", "4"]) == 0
    assert (out / "manifest.jsonl").read_text() == ""
    # the same --out again: the image no longer accepted is gone, the user's file stays
    assert sorted(p.name for p in (out / "images").iterdir()) == ["mine.txt"]


def test_study_export_fraction_real_and_figure(tmp_path):
    run = make_run(tmp_path, 2)
    review = make_review(run, "--mode", "study", "--min-reviewers", "3")
    c = TestClient(build_app(review), base_url=BASE)
    for k, who in enumerate(("ann", "bob", "cat")):
        for item in review.items:
            guess = "real" if (k == 0 or item is review.items[0]) else "generated"
            answer(c, who, item.id, {"real_or_generated": guess, "realism": str(k + 3)}, nonce=item.id)
    assert main(["export", str(review.store.path), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "review_summary.json").read_text())
    real = summary["sets"]["generated"]["questions"]["real_or_generated"]["fraction"]["real"]
    assert real["value"] == pytest.approx(4 / 6) and real["ci"][0] < 4 / 6 < real["ci"][1]
    # by image: the first is "real" by 3 of 3, the second "generated" by 2 of 3 (the figure's bar)
    per_image = summary["sets"]["generated"]["questions"]["real_or_generated"]["images"]
    assert per_image["counts"] == {"generated": 1, "real": 1} and per_image["n"] == 2
    assert summary["sets"]["generated"]["questions"]["realism"]["counts"] == {"3": 2, "4": 2, "5": 2}
    assert summary["agreement"]["real_or_generated"]["method"] == "fleiss"
    assert (tmp_path / "out" / "study.png").stat().st_size > 1000
    assert not (tmp_path / "out" / "accepted.jsonl").exists()


def _browser():
    """Headless Chromium (Debian's chromium + chromium-driver) through selenium, or a skip with the reason;
    under CI a missing browser fails instead, so the test runs where it counts."""
    import shutil

    missing = [n for n in ("chromium", "chromedriver") if shutil.which(n) is None]
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        missing.append("selenium (pip)")
    if missing:
        reason = "needs " + ", ".join(missing) + " (apt-get install chromium chromium-driver)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        opts.add_argument(arg)
    return webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))


def _wait(driver, condition, seconds: float = 10.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds).until(lambda d: condition(d))


@pytest.mark.slow
def test_browser_answers_with_the_keyboard_reloads_and_resumes(tmp_path):
    """A person's path: open the page, answer two images with the keys only (1/2 pick choices, Enter
    submits), undo one with u, answer it again, reload: the page resumes at 2 of 4 and the database holds it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    db = tmp_path / "browser.sqlite"
    proc, base = _start_server(make_run(tmp_path), db, "--show-predictions")
    driver = _browser()
    try:
        driver.get(f"{base}/?reviewer=ann")
        count = lambda: driver.find_element(By.ID, "count").text  # noqa: E731
        _wait(driver, lambda d: count() == "0 / 4")
        body = driver.find_element(By.TAG_NAME, "body")
        for k, note in enumerate(("feeder", "flowers", "again")):
            first = driver.find_element(By.ID, "img").get_attribute("src")
            assert "/image/" in first and "sks flower" in driver.find_element(By.ID, "info").text
            body.send_keys("1")  # spurious feature: yes
            driver.find_element(By.TAG_NAME, "body").send_keys("2")  # class object: no -> the note has focus
            driver.switch_to.active_element.send_keys(note, Keys.ENTER)
            _wait(
                driver,
                lambda d, k=k: count() == f"{min(k + 1, 2)} / 4" and d.find_element(By.ID, "msg").text == "",
            )
            body = driver.find_element(By.TAG_NAME, "body")
            if k == 1:
                body.send_keys("u")
                _wait(driver, lambda d: count() == "1 / 4")
        driver.refresh()
        _wait(driver, lambda d: count() == "2 / 4")
        assert driver.find_element(By.ID, "img").is_displayed()
        assert driver.find_element(By.CSS_SELECTOR, ".pred b")  # the target class in bold
        driver.save_screenshot(str(tmp_path / "page.png"))
    finally:
        driver.quit()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    rows = ReviewStore(db).answers()
    notes = [r["answer"] for r in rows if r["question"] == "note"]
    assert notes == ["feeder", "again"]
    assert {(r["question"], r["answer"]) for r in rows if r["question"] != "note"} == {
        ("spurious_feature", "yes"),
        ("class_object", "no"),
    }


def test_questions_come_from_a_config_file_and_bad_ones_name_the_key(tmp_path, capsys):
    run = make_run(tmp_path, 1)
    cfg = tmp_path / "q.yaml"
    cfg.write_text("questions:\n  - {key: sharp, text: 'Sharp?', choices: ['yes', 'no']}\n  - {key: why}\n")
    st = client(run, "--config", str(cfg)).get("/api/state", params={"reviewer": "a"}).json()
    assert st["questions"] == [
        {"key": "sharp", "text": "Sharp?", "choices": ["yes", "no"], "required": True},
        {"key": "why", "text": "why", "choices": None, "required": False},
    ]
    cfg.write_text("questions:\n  - {key: 'not an id', choices: [a]}\n")
    assert main([str(run), "--config", str(cfg)]) == 2
    assert "questions[0].key" in capsys.readouterr().err
    cfg.write_text("questions:\n  - {key: ok, choices: [yes, no]}\n")  # unquoted: YAML booleans
    assert main([str(run), "--config", str(cfg)]) == 2
    assert "questions[0].choices" in capsys.readouterr().err


def test_a_port_out_of_range_or_in_use_is_one_line(tmp_path, capsys):
    run = make_run(tmp_path, 1)
    assert main([str(run), "--port", "99999"]) == 2
    assert "--port must be in 0..65535, got 99999" in capsys.readouterr().err
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert main([str(run), "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "Traceback" not in err
    assert not (run / "review").exists()  # refused before the database is created


@pytest.mark.slow
def test_export_uploads_the_summary_to_wandb_offline(tmp_path):
    review = make_review(make_run(tmp_path, 2))
    c = TestClient(build_app(review), base_url=BASE)
    for who in ("ann", "bob"):
        for item in review.items:
            answer(c, who, item.id, nonce=item.id)
    out = tmp_path / "out"
    assert (
        main(["export", str(review.store.path), "--out", str(out), "logger=wandb"]) == 0
    )  # or --logger wandb
    (record,) = out.glob("wandb/offline-run-*/*.wandb")
    data = record.read_bytes()
    for key in (
        b"review/generated/spurious_feature/yes",
        b"review/agreement/class_object",
        b"review/answers",
    ):
        assert key in data, key


@pytest.mark.slow
def test_spurgen_export_review_keeps_only_accepted_images_with_votes(tmp_path, capsys):
    """`spurgen export review=<db>`: of the images the classifiers vote for, only those reviewers accepted are
    kept; images with no votes are left out; the manifest carries the votes."""
    from spurgen.cli.export import main as export_main
    from tests.test_evaluate import make_generated

    images = make_generated(tmp_path / "generated", n=4)
    review = make_review(images, "--db", str(tmp_path / "r.sqlite"))
    c = TestClient(build_app(review), base_url=BASE)
    by_name = {i.path.name: i for i in review.items}
    good, bad = by_name["img_000.png"], by_name["img_001.png"]
    for who in ("ann", "bob"):
        answer(c, who, good.id, nonce="1")
        answer(c, who, bad.id, {"spurious_feature": "yes", "class_object": "yes"}, nonce="2")
    from spurgen.eval.predict import predict_set
    from tests.test_evaluate import TINY, tiny_classifiers

    first = predict_set(tiny_classifiers(), [good.path], target=0).per_classifier[TINY[0]]
    target = int(first.argmax[0])  # a class one tiny classifier predicts for the accepted image
    out = tmp_path / "dataset"
    argv = [f"images_dir={images}", "eval=tiny", "class=imagenet", f"target.index={target}", f"out_dir={out}"]
    argv.append(f"hydra.run.dir={tmp_path}/h")
    assert export_main([*argv, "min_classifiers=1", "review=" + str(tmp_path / "missing.sqlite")]) == 2
    assert "does not exist" in capsys.readouterr().err and not out.exists()  # before any classifier ran
    assert export_main([*argv, "min_classifiers=1", f"review={review.store.path}"]) == 0
    meta = json.loads((out / "dataset.json").read_text())
    recs = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["file"] for r in recs] == ["images/img_000.png"] and meta["num_exported"] == 1
    assert sorted(p.name for p in (out / "images").iterdir()) == ["img_000.png"]
    assert recs[0]["review"]["votes"] == 2 and recs[0]["review"]["class_object"] == {"no": 2}
    assert recs[0]["votes"] >= 1 and set(recs[0]["classifiers"]) == set(TINY)
    assert meta["review_min_votes"] == 2 and "unsure" in meta["review_rule"]


def test_a_server_fault_is_a_500_with_a_message_and_no_traceback(tmp_path, capsys):
    review = make_review(make_run(tmp_path, 1))
    c = TestClient(build_app(review), base_url=BASE, raise_server_exceptions=False)
    review.store.close()  # every query now raises inside the app
    r = c.get("/api/state", params={"reviewer": "ann"})
    assert r.status_code == 500 and "internal error" in r.json()["error"]
    assert "Traceback" not in r.text and "sqlite" not in r.text.lower()
    assert "Traceback" in capsys.readouterr().err  # the operator's terminal has it


def test_cross_site_posts_and_foreign_host_names_are_refused(tmp_path):
    """A page elsewhere can post text/plain without a preflight, or rebind its name to 127.0.0.1: both 4xx."""
    review = make_review(make_run(tmp_path, 1))
    c = TestClient(build_app(review), base_url=BASE)
    body = json.dumps({"reviewer": "a", "image": review.items[0].id, "answers": GOOD, "nonce": "x"})
    r = c.post("/api/answer", content=body, headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["error"]
    assert c.get("/", headers={"Host": "evil.example:8765"}).status_code == 400
    assert c.get("/", headers={"Host": "localhost:8765"}).status_code == 200
    assert review.store.answers() == []
    # an IPv6 loopback bind gets the same check (its Host header is bracketed)
    v6 = TestClient(
        build_app(make_review(make_run(tmp_path / "v6", 1), "--host", "::1")), base_url="http://[::1]:8765"
    )
    assert v6.get("/", headers={"Host": "[::1]:8765"}).status_code == 200
    assert v6.get("/", headers={"Host": "evil.example:8765"}).status_code == 400


def test_one_reviewer_one_vote_a_second_tab_gets_409_and_undo_frees_the_image(tmp_path):
    """Two tabs of one reviewer show the same image and both submit (two nonces): the second is refused with
    409 and the next image, a retry of the first is still a no-op, and after undo the image can be answered
    again."""
    review = make_review(make_run(tmp_path, 2))
    c = TestClient(build_app(review), base_url=BASE)
    image = c.get("/api/state", params={"reviewer": "ann"}).json()["image"]["id"]
    first = answer(c, "ann", image, nonce="tab1")
    assert first.status_code == 200
    second = answer(c, "ann", image, {**GOOD, "class_object": "yes"}, nonce="tab2")
    assert second.status_code == 409 and "already answered" in second.json()["error"]
    assert second.json()["image"]["id"] != image  # the page moves on to the next image
    assert answer(c, "ann", image, nonce="tab1").json()["saved"] == first.json()["saved"]
    assert len(review.store.answers()) == len(GOOD)
    assert answer(c, "bob", image, nonce="tab2").status_code == 200  # another reviewer's vote counts
    c.post("/api/undo", json={"reviewer": "ann"})
    assert answer(c, "ann", image, {**GOOD, "class_object": "yes"}, nonce="tab3").status_code == 200
    mine = [r for r in review.store.answers() if r["reviewer"] == "ann"]
    assert {(r["question"], r["answer"]) for r in mine} == {**GOOD, "class_object": "yes"}.items()


def test_export_counts_distinct_reviewers_in_a_database_with_duplicate_votes(tmp_path):
    """A database written before one vote per reviewer was enforced may hold two standing answers of one
    reviewer to one image: the export counts that reviewer once (their latest answer)."""
    review = make_review(make_run(tmp_path, 1))
    (item,) = review.items
    review.store.add("ann", item.ref, GOOD, "tab1")
    db = review.store.path
    review.store.close()
    con = sqlite3.connect(db)
    con.execute(
        "INSERT INTO submissions(reviewer, nonce, image_hash, set_name, file, time) "
        "SELECT reviewer, 'tab2', image_hash, set_name, file, time FROM submissions"
    )
    con.execute(
        "INSERT INTO answers(submission, reviewer, time, image_hash, set_name, file, question, answer) "
        "SELECT 2, reviewer, time, image_hash, set_name, file, question, answer FROM answers"
    )
    con.commit()
    con.close()
    out = tmp_path / "out"
    assert main(["export", str(db), "--out", str(out), "--min-votes", "2"]) == 0
    assert (out / "accepted.jsonl").read_text() == ""
    summary = json.loads((out / "review_summary.json").read_text())
    assert summary["sets"]["generated"]["questions"]["spurious_feature"]["counts"] == {"yes": 1}
    assert main(["filter", str(db), str(tmp_path / "run" / "generated"), "--out", str(tmp_path / "f")]) == 0
    assert json.loads((tmp_path / "f" / "dataset.json").read_text())["num_accepted"] == 0


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 30000 + b"]" * 30000,  # 60 KB, under the body limit
        b'{"reviewer": "ann", "nonce": "n", "answers": ' + b"[" * 30000 + b"]" * 30000 + b"}",
    ],
)
def test_deeply_nested_json_is_a_400_not_a_500(tmp_path, body):
    review = make_review(make_run(tmp_path, 1))
    c = TestClient(build_app(review), base_url=BASE, raise_server_exceptions=False)
    for url in ("/api/answer", "/api/undo"):
        r = c.post(url, content=body, headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and "nested" in r.json()["error"], (url, r.text[:200])
    assert review.store.answers() == []


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("note", {"a": [1, 2]}, "'note': answer must be a string"),
        ("note", 3.5, "'note': answer must be a string"),
        ("note", False, "'note': answer must be a string"),
        ("spurious_feature", 1, "'spurious_feature': answer must be a string"),
        ("note", "\ud800 lone surrogate", "'note': answer is not valid Unicode"),
    ],
)
def test_answers_of_the_wrong_type_are_refused_naming_the_field(tmp_path, field, value, words):
    review = make_review(make_run(tmp_path, 1))
    c = TestClient(build_app(review), base_url=BASE, raise_server_exceptions=False)
    body = {"reviewer": "ann", "image": review.items[0].id, "answers": {**GOOD, field: value}, "nonce": "n"}
    r = c.post("/api/answer", content=json.dumps(body), headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and words in r.json()["error"], r.text
    assert review.store.answers() == []


@pytest.mark.parametrize(
    "change, words",
    [
        ({"image": ["x"]}, "image:"),
        ({"image": None}, "image:"),
        ({"reviewer": ["ann"]}, "reviewer:"),
        ({"nonce": 7}, "nonce:"),
        ({"nonce": "abc\n"}, "nonce:"),
        ({"extra": 1}, "unknown field 'extra'"),
    ],
)
def test_request_fields_of_the_wrong_type_or_unknown_are_refused(tmp_path, change, words):
    review = make_review(make_run(tmp_path, 1))
    c = TestClient(build_app(review), base_url=BASE, raise_server_exceptions=False)
    body = {"reviewer": "ann", "image": review.items[0].id, "answers": GOOD, "nonce": "n1", **change}
    r = c.post("/api/answer", json=body)
    assert r.status_code == 400 and words in r.json()["error"], r.text
    r = c.post("/api/undo", json={"reviewer": "ann", "extra": 1})
    assert r.status_code == 400 and "unknown field 'extra'" in r.json()["error"]
    assert review.store.answers() == []


def test_media_types_are_case_insensitive(tmp_path):
    review = make_review(make_run(tmp_path, 1))
    c = TestClient(build_app(review), base_url=BASE)
    body = json.dumps({"reviewer": "a", "image": review.items[0].id, "answers": GOOD, "nonce": "x"})
    r = c.post("/api/answer", content=body, headers={"Content-Type": "Application/JSON; charset=UTF-8"})
    assert r.status_code == 200, r.text


@contextlib.contextmanager
def _serve_here(app, host: str = "127.0.0.1"):
    """The app under uvicorn in a thread of this process, on a free port of host (a loopback address); yields
    the port and stops the server on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.bind((host, 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.started, "uvicorn did not start"
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _raw_status(port: int, headers: str, body: bytes, wait: float = 5.0, host: str = "127.0.0.1") -> int:
    """Send a hand-written POST /api/answer and return the status of the reply (a socket timeout when the
    server does not answer within `wait` s)."""
    head = f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\r\n"
    with socket.create_connection((host, port), timeout=wait) as s:
        s.sendall(head.encode() + body)
        reply = s.recv(4096)
    return int(reply.split(b" ", 2)[1])


def test_a_body_is_streamed_with_a_size_limit_and_a_read_timeout(tmp_path):
    """A declared length over the limit is refused from the header (a body of 1 byte used to hang the
    connection); a body that stops arriving gets 408; a chunked body stops at the limit."""
    review = make_review(make_run(tmp_path, 1))
    with _serve_here(build_app(review)) as port:
        assert _raw_status(port, "Content-Length: 999999999\r\n", b"{") == 413
        chunk = b"x" * 40000
        chunked = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)) + b"0\r\n\r\n"
        assert _raw_status(port, "Transfer-Encoding: chunked\r\n", chunked) == 413
        assert _raw_status(port, "Content-Length: abc\r\n", b"{}") == 400
    with _serve_here(build_app(review, body_timeout=0.5)) as port:
        t0 = time.monotonic()
        assert _raw_status(port, "Content-Length: 100\r\n", b'{"reviewer"') == 408
        assert time.monotonic() - t0 < 4
    assert review.store.answers() == []


@pytest.mark.parametrize("mode", ["review", "study"])
def test_files_that_are_not_images_are_skipped_in_one_line_or_refused(tmp_path, capsys, mode):
    run = make_run(tmp_path, 2)
    (run / "generated" / "fake.png").write_text("not an image")
    (run / "generated" / "cut.png").write_bytes((run / "generated" / "00000.png").read_bytes()[:60])
    review = make_review(run, "--mode", mode)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "skipped 2 files" in err and "fake.png" in err and "cut.png" in err
    assert sorted(i.path.name for i in review.items) == ["00000.png", "00001.png"]
    c = TestClient(build_app(review), base_url=BASE, raise_server_exceptions=False)
    for item in review.items:  # every listed image is served as what it is
        r = c.get(f"/image/{item.id}")
        assert r.status_code == 200 and r.headers["content-type"] in ("image/png", "image/jpeg")
    capsys.readouterr()  # the client's log lines (a handler left by another test's Hydra run may add noise)
    assert main([str(run), "--mode", mode, "--unreadable", "refuse", "--db", str(tmp_path / "x.sqlite")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "fake.png" in err and not (tmp_path / "x.sqlite").exists()


def test_an_empty_folder_is_refused_and_leaves_nothing_behind(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert "no images" in capsys.readouterr().err and list(empty.iterdir()) == []
    (empty / "fake.png").write_text("not an image")  # nothing readable is as empty
    assert main([str(empty)]) == 2
    assert "no images" in capsys.readouterr().err and [p.name for p in empty.iterdir()] == ["fake.png"]


def test_a_database_of_the_other_mode_is_named_plainly(tmp_path):
    ReviewStore(tmp_path / "s.sqlite", mode="study").close()
    with pytest.raises(Exception) as caught:
        ReviewStore(tmp_path / "s.sqlite", mode="review")
    assert str(caught.value).endswith("is a study database, not a review one: choose another --db")
    assert "study study" not in str(caught.value)


@pytest.mark.parametrize("mode", ["review", "study"])
def test_a_listed_file_whose_content_changes_is_refused_not_served_under_its_old_id(tmp_path, mode):
    run = make_run(tmp_path, 3)
    review = make_review(run, "--mode", mode, "--min-reviewers", "1")
    c = TestClient(build_app(review), base_url=BASE, raise_server_exceptions=False)
    said = GOOD if mode == "review" else {"real_or_generated": "real", "realism": "3"}
    swapped, broken, kept = review.items
    other = io.BytesIO()
    Image.new("RGB", (64, 48), (255, 0, 0)).save(other, format="PNG")
    swapped.path.write_bytes(other.getvalue())  # another image under the same name
    broken.path.write_text("not an image any more")
    for item in (swapped, broken):
        r = c.get(f"/image/{item.id}")
        assert r.status_code == 410 and "changed" in r.json()["error"], r.text
        r = answer(c, "ann", item.id, said)
        assert r.status_code == 410 and r.json()["image"]["id"] == kept.id  # the page moves on
    # the page never offers them again: the reviewer gets the one image left, then nothing
    st = c.get("/api/state", params={"reviewer": "ann"}).json()
    assert st["image"]["id"] == kept.id and c.get(st["image"]["url"]).status_code == 200
    assert answer(c, "ann", kept.id, said).status_code == 200
    assert c.get("/api/state", params={"reviewer": "ann"}).json()["image"] is None
    assert {r["image_hash"] for r in review.store.answers()} == {kept.hash}


@needs_ipv6
def test_serves_on_the_ipv6_loopback(tmp_path):
    """`--host ::1` starts (the port check used to open an IPv4 socket and blame a busy port), needs no
    token, and its Host check takes [::1] and refuses other names."""
    db = tmp_path / "v6.sqlite"
    proc, base = _start_server(make_run(tmp_path, 2), db, host="::1")
    try:
        st = _get(f"{base}/api/state?reviewer=ann")
        body = {"reviewer": "ann", "image": st["image"]["id"], "answers": GOOD, "nonce": "v6"}
        assert _post(f"{base}/api/answer", body)["saved"] == 1
        foreign = urllib.request.Request(f"{base}/", headers={"Host": "evil.example"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(foreign, timeout=10)
        assert refused.value.code == 400
        refused.value.close()
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert len(ReviewStore(db).answers()) == len(GOOD)


def test_ipv6_hosts_get_an_ipv6_port_check_and_a_bracketed_address(tmp_path):
    from spurgen.review.cli import listen_family, open_url

    assert listen_family("::1") == listen_family("::") == listen_family("[::1]") == socket.AF_INET6
    assert listen_family("127.0.0.1") == listen_family("0.0.0.0") == socket.AF_INET
    assert open_url("::1", 8765, None) == "http://[::1]:8765/"
    assert open_url("127.0.0.1", 80, "t0ken-123") == "http://127.0.0.1:80/?token=t0ken-123"
    review = make_review(make_run(tmp_path, 1), "--host", "[::1]")  # brackets as in a URL are accepted
    assert "[::1]" in review.cfg.allowed_hosts


def test_answers_csv_escapes_cells_a_spreadsheet_would_run_as_formulas(tmp_path):
    review = make_review(make_run(tmp_path, 4))
    c = TestClient(build_app(review), base_url=BASE)
    notes = ['=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)"]
    for item, note in zip(review.items, notes, strict=True):
        assert answer(c, "-ann", item.id, {**GOOD, "note": note}, nonce=item.id).status_code == 200
    assert main(["export", str(review.store.path), "--out", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "answers.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["answer"] for r in rows if r["question"] == "note") == sorted("'" + n for n in notes)
    assert {r["reviewer"] for r in rows} == {"'-ann"}
    assert {r["answer"] for r in rows if r["question"] == "spurious_feature"} == {"yes"}
    assert {r["reviewer"] for r in review.store.answers()} == {"-ann"}  # the database keeps what was said


def test_free_text_questions_get_no_fractions_and_no_kappa(tmp_path):
    cfg = tmp_path / "q.yaml"
    cfg.write_text("questions:\n  - {key: sharp, choices: ['yes', 'no']}\n  - {key: why}\n")
    for extra in ([], ["--config", str(cfg)]):
        run = make_run(tmp_path / f"q{len(extra)}", 2)
        review = make_review(run, *extra)
        c = TestClient(build_app(review), base_url=BASE)
        said = {**GOOD, "note": "blurry"} if not extra else {"sharp": "yes", "why": "blurry"}
        for who in ("ann", "bob"):
            for item in review.items:
                assert answer(c, who, item.id, said, nonce=item.id).status_code == 200
        free = "note" if not extra else "why"
        review.store.close()
        assert main(["export", str(review.store.path), "--out", str(run / "out")]) == 0
        summary = json.loads((run / "out" / "review_summary.json").read_text())
        assert summary["sets"]["generated"]["questions"][free] == {"n": 4, "free_text": True}
        assert free not in summary["agreement"]
        chosen = "spurious_feature" if not extra else "sharp"
        assert summary["sets"]["generated"]["questions"][chosen]["counts"] == {"yes": 4}
        assert summary["agreement"][chosen]["method"] == "cohen"


# --- fuzz: generated malformed bodies to every write endpoint, over loopback only ---------------------------

FUZZ_PER_ENDPOINT = 240
BAD_REVIEWERS = ["", "   ", "a/b", "<b>x</b>", "a" * 65, "\U0001f600", "a\x00b", "tab\tname"]
BAD_NONCES = ["", "a b", "a" * 65, "a/b", "a\nb", "n.1"]
BAD_VALUES = [0, 1, -1, 3.5, 1e308, True, False, [], [1, 2], {}, {"a": [1, 2]}, [[[[]]]]]


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def _nested(rng, inner: bytes = b"1") -> bytes:
    depth = rng.choice([200, 1000, 5000, 30000])
    opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
    return opener * depth + inner + closer * depth


def _bad_answer_body(rng, image: str, k: int) -> tuple[bytes, str]:
    """(body, content type) of one malformed POST /api/answer; none of them is a storable answer."""
    good = {"reviewer": "fuzz", "image": image, "answers": dict(GOOD), "nonce": f"f{k}"}
    ctype = "application/json"
    kind = rng.randrange(12)
    if kind == 0:  # nesting, bare or as a field
        body = _nested(rng) if rng.random() < 0.5 else _json(good).replace(b'"f%d"' % k, _nested(rng), 1)
    elif kind == 1:  # a top-level field of the wrong type or value
        field = rng.choice(["reviewer", "image", "answers", "nonce"])
        bad = {
            "reviewer": BAD_VALUES + BAD_REVIEWERS + [None],
            "image": BAD_VALUES + [None, "", "../../etc/passwd", "0" * 20],
            "answers": BAD_VALUES[:8] + ["yes", None, {}, {"spurious_feature": "yes"}],
            "nonce": BAD_VALUES + BAD_NONCES + [None],
        }[field]
        body = _json({**good, field: rng.choice(bad)})
    elif kind == 2:  # a missing field
        gone = rng.choice(list(good))
        body = _json({f: v for f, v in good.items() if f != gone})
    elif kind == 3:  # an answer of the wrong type, value or length
        q = rng.choice(["spurious_feature", "class_object", "note"])
        bad = BAD_VALUES if q == "note" else [*BAD_VALUES, None, "", "maybe", "YES", "yes "]
        value = rng.choice([*bad, "x" * 2001] if q == "note" else bad)
        body = _json({**good, "answers": {**GOOD, q: value}})
    elif kind == 4:  # unknown fields and questions
        extra = rng.choice([{"extra": 1}, {"token": "x"}, {"answers": {**GOOD, "colour": "red"}}])
        body = _json({**good, **extra})
    elif kind == 5:  # sizes: over the 64 KB limit
        pad = rng.choice([65 * 1024, 80 * 1024, 100 * 1024])
        body = _json({**good, "answers": {**GOOD, "note": "x" * pad}})
    elif kind == 6:  # encodings: UTF-16/32, a BOM, Latin-1, invalid or overlong UTF-8
        text = json.dumps({**good, "answers": {**GOOD, "note": "café"}}, ensure_ascii=False)
        body = rng.choice(
            [
                text.encode("utf-16"),
                text.encode("utf-32"),
                text.encode("utf-16-le"),
                b"\xef\xbb\xbf" + text.encode(),
                text.encode("latin-1"),
                text.encode().replace(b"caf\xc3\xa9", b"caf\xff\xfe"),
                text.encode().replace(b"caf\xc3\xa9", b"\xc0\xaf\xe0\x80\xaf"),
            ]
        )
    elif kind == 7:  # a lone surrogate escaped in JSON
        body = _json(good).replace(b'"a bird feeder"', rng.choice([b'"\\ud800"', b'"x\\udfff"']))
    elif kind == 8:  # broken syntax: cut, trailing garbage, not an object, bare constants
        text = _json(good)
        body = rng.choice(
            [
                text[: rng.randrange(1, len(text) - 1)],
                text + b"}",
                text + b" x",
                b"",
                b"null",
                b"[]",
                b"1",
                b'"string"',
                b"NaN",
                b"1" * 5000,  # past Python's integer digit limit
                bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),
            ]
        )
    elif kind == 9:  # a media type a cross-site form can send, or none
        body = _json(good)
        ctype = rng.choice(
            [
                "text/plain",
                "application/x-www-form-urlencoded",
                "multipart/form-data",
                "",
                "application/jsonx",
            ]
        )
    elif kind == 10:  # numbers as answers, NaN and Infinity
        body = _json(good).replace(b'"yes"', rng.choice([b"NaN", b"Infinity", b"-Infinity", b"1e999"]), 1)
    else:  # answers as a list of pairs, or a question answered with an object
        body = _json({**good, "answers": rng.choice([list(GOOD.items()), {"spurious_feature": GOOD}])})
    return body, ctype


def _bad_undo_body(rng) -> tuple[bytes, str]:
    """(body, content type) of one malformed POST /api/undo; none of them names a valid reviewer alone."""
    kind = rng.randrange(6)
    if kind == 0:
        return _nested(rng), "application/json"
    if kind == 1:
        return _json({"reviewer": rng.choice(BAD_VALUES + BAD_REVIEWERS + [None])}), "application/json"
    if kind == 2:
        return _json(rng.choice([{}, {"reviewer": "ann", "extra": 1}, {"who": "ann"}])), "application/json"
    if kind == 3:
        return _json({"reviewer": "ann"}), rng.choice(["text/plain", "", "application/xml"])
    if kind == 4:
        broken = ['{"reviewer": "ann"}'.encode("utf-16"), b'{"reviewer": "\\ud800"}', b"{", b"[]", b"\xff"]
        return rng.choice(broken), "application/json"
    return _json({"reviewer": "ann", "pad": "x" * (70 * 1024)}), "application/json"


def _status(host: str, port: int, path: str, body: bytes, ctype: str) -> int:
    """POST body to host:port (a loopback address) on a fresh connection; the reply's status."""
    conn = http.client.HTTPConnection(host, port, timeout=15)
    try:
        conn.putrequest("POST", path)
        if ctype:
            conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        return conn.getresponse().status
    finally:
        conn.close()


def test_fuzz_malformed_bodies_to_every_write_endpoint_are_4xx_and_store_nothing(tmp_path):
    """240 generated malformed bodies to each of /api/answer and /api/undo (nesting, types, sizes, encodings,
    syntax, media types), sent to 127.0.0.1 and, where the machine has it, [::1]: each gets a 4xx and no
    answer is stored or retracted."""
    import random

    review = make_review(make_run(tmp_path, 2))
    review.store.add("ann", review.items[0].ref, GOOD, "seed")  # undo must not retract it
    rng = random.Random(25)
    hosts = ["127.0.0.1", "::1"] if _has_ipv6_loopback() else ["127.0.0.1"]
    t0 = time.monotonic()
    with contextlib.ExitStack() as stack:
        ports = {h: stack.enter_context(_serve_here(build_app(review), h)) for h in hosts}
        for k in range(FUZZ_PER_ENDPOINT):
            host = hosts[k % len(hosts)]
            for path, (body, ctype) in (
                ("/api/answer", _bad_answer_body(rng, review.items[1].id, k)),
                ("/api/undo", _bad_undo_body(rng)),
            ):
                status = _status(host, ports[host], path, body, ctype)
                assert 400 <= status < 500, (path, host, status, ctype, body[:300])
    seconds = time.monotonic() - t0
    con = sqlite3.connect(review.store.path)
    kept = con.execute("SELECT reviewer, nonce, retracted FROM submissions").fetchall()
    assert kept == [("ann", "seed", 0)]
    assert con.execute("SELECT COUNT(*) FROM answers").fetchone()[0] == len(GOOD)
    con.close()
    assert seconds < 120, f"{2 * FUZZ_PER_ENDPOINT} requests took {seconds:.0f} s"


@pytest.mark.slow
def test_browser_a_second_tab_is_told_and_moves_on(tmp_path):
    """The page of a tab whose image the same reviewer already answered elsewhere: Enter gets the 409 message
    and the next image, and the database holds one vote."""
    from selenium.webdriver.common.by import By

    db = tmp_path / "tabs.sqlite"
    proc, base = _start_server(make_run(tmp_path, 3), db)
    driver = _browser()
    try:
        driver.get(f"{base}/?reviewer=ann")
        _wait(driver, lambda d: d.find_element(By.ID, "count").text == "0 / 3")
        shown = driver.find_element(By.ID, "img").get_attribute("src").split("/image/")[1]
        other = {"reviewer": "ann", "image": shown, "answers": GOOD, "nonce": "other-tab"}
        assert _post(f"{base}/api/answer", other)["saved"] == 1
        body = driver.find_element(By.TAG_NAME, "body")
        body.send_keys("1")
        driver.find_element(By.TAG_NAME, "body").send_keys("2")
        driver.switch_to.active_element.send_keys("\n")
        _wait(driver, lambda d: "already answered" in d.find_element(By.ID, "msg").text)
        assert driver.find_element(By.ID, "count").text == "1 / 3"
        assert shown not in driver.find_element(By.ID, "img").get_attribute("src")
    finally:
        driver.quit()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert len(ReviewStore(db).answers()) == len(GOOD)
