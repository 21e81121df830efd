"""Issue #41: a server that fails closed. One test per finding of the issue's table (numbered as there),
each through real HTTP: FastAPI's TestClient, or a real uvicorn server on loopback with the settings
``dermsearch serve`` uses."""

from __future__ import annotations

import asyncio
import base64
import csv
import io
import json
import logging
import re
import shutil
import socket
import subprocess
import time
from contextlib import contextmanager
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient

from dermsearch.search import Searcher
from dermsearch.web.app import WebConfig, create_app
from dermsearch.web.auth import TokenStore

from .conftest import labelled_archive, lesion_image, running_server

COMMENT = b"PATIENT Jane Roe 1961-04-02"
NEWLINE_ID = "new\nline"
COMMA_DX = "nevus, atypical"
SECURITY = ("content-security-policy", "x-content-type-options", "x-frame-options", "referrer-policy",
            "cross-origin-resource-policy")


@pytest.fixture(scope="module")
def archive(tiny_extractor, tmp_path_factory):
    """Eight images: one id with a newline, two diagnoses with a comma, one JPEG with a comment segment."""
    from dermsearch.index.build import build_index

    root = tmp_path_factory.mktemp("failclosed")
    rows = [{"image_id": NEWLINE_ID if i == 6 else f"p{i}", "file": "c.jpg" if i == 0 else f"i{i}.png",
             "diagnosis": COMMA_DX if i in (1, 2) else "nevus", "lesion_id": f"L{i}"} for i in range(8)]
    csv_path = labelled_archive(root, rows, folder=".")
    lesion_image(0).save(root / "c.jpg", format="JPEG", quality=90, comment=COMMENT)
    build_index(csv_path, root / "ix", extractor=tiny_extractor)
    return root, tiny_extractor


def _copy(archive, tmp_path):
    root, extractor = archive
    ix = tmp_path / "ix"
    shutil.copytree(root / "ix", ix)
    (ix / "ratings.sqlite").unlink(missing_ok=True)
    return ix, extractor


def _app(ix, extractor, **cfg):
    return create_app(ix, WebConfig(**cfg), searcher=Searcher(ix, extractor=extractor))


def _png(seed: int = 7) -> bytes:
    buf = io.BytesIO()
    lesion_image(seed).save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def serving(app):
    """A real uvicorn server on loopback, configured exactly as ``dermsearch serve`` configures it;
    yields its port."""
    from dermsearch.cli.serve import server_config

    with running_server(app, server_config) as url:
        yield int(url.rsplit(":", 1)[1])


def _raw(port: int, head: str, body: bytes = b"", timeout: float = 10.0) -> tuple[int, str]:
    """Send a request's bytes over a socket; (status, whole reply) as soon as the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode("latin-1") + body)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
        length = re.search(rb"(?i)content-length: *(\d+)", reply)
        while length and len(reply.split(b"\r\n\r\n", 1)[1]) < int(length.group(1)):
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    text = reply.decode("latin-1")
    return int(text.split(" ", 2)[1]), text


def _get(port: int, path: str, headers: dict | None = None) -> int:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return _raw(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n")[0]


# ---------------------------------------------------------------- 1: auth on by default, failing closed
def test_1_revoking_every_token_locks_a_running_server(archive, tmp_path):
    ix, extractor = _copy(archive, tmp_path)
    store = TokenStore.for_index(ix)
    admin = store.create("root", "admin")
    with serving(_app(ix, extractor)) as port:                     # the default: authentication on
        bearer = {"Authorization": f"Bearer {admin}"}
        assert _get(port, "/api/ratings-key.csv", bearer) == 200
        store.revoke("root")                                       # the last token goes, the server runs on
        for path in ("/api/ratings-key.csv", "/api/ratings.csv", "/api/index", "/api/images/p3"):
            assert _get(port, path) == 401, path
            assert _get(port, path, bearer) == 401, path
        (ix / "web-tokens.json").unlink()                         # the file lost: still locked
        assert _get(port, "/api/ratings-key.csv") == 401 and _get(port, "/api/images/p3") == 401
        (ix / "web-tokens.json").write_text("{not json")           # corrupt while running: 503, not 500
        status, reply = _raw(port, "GET /api/index HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert status == 503 and "web-tokens.json" in reply and "content-security-policy" in reply.lower()
        assert str(ix) not in reply and str(tmp_path) not in reply           # no server path to a client
    from dermsearch.errors import ConfigError
    with pytest.raises(ConfigError, match="not a readable token file"):   # corrupt at start: a clear error
        _app(ix, extractor)
    (ix / "web-tokens.json").unlink()
    c = TestClient(_app(ix, extractor), base_url="http://localhost")     # no tokens at all: locked
    assert c.get("/api/index").status_code == 401 and c.get("/").status_code == 200


def test_1_serve_creates_an_admin_token_and_prints_its_sign_in_link_once(archive, tmp_path, capsys):
    from argparse import Namespace

    from dermsearch.cli.serve import _announce, _auth_check

    ix, _ = _copy(archive, tmp_path)
    args = Namespace(index=ix, host="127.0.0.1", port=8123, auth="on", trusted_proxy=[])
    _announce(args, _auth_check(args))
    err = capsys.readouterr().err
    token = re.search(r"http://127\.0\.0\.1:8123/login#token=(\S+)", err).group(1)
    assert TokenStore.for_index(ix).verify(token).role == "admin" and "sign-in required" in err
    _announce(args, _auth_check(args))                             # a token exists now: no new one, no link
    assert "#token=" not in capsys.readouterr().err and len(TokenStore.for_index(ix).active()) == 1
    _announce(Namespace(index=ix, host="127.0.0.1", port=8123, auth="off", trusted_proxy=[]), 0)
    assert "authentication is OFF" in capsys.readouterr().err


# ---------------------------------------------------------------- 2: uploads are images and nothing else
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"newpath 0 0 moveto 16 0 lineto 16 16 lineto closepath fill\nshowpage\n%%EOF\n")


def test_2_an_eps_upload_never_reaches_ghostscript(archive, tmp_path, monkeypatch):
    from PIL import EpsImagePlugin

    from dermsearch.extract import ImageError, load_image

    bin_dir, called = tmp_path / "bin", tmp_path / "gs-was-called"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\necho \"$@\" >> {called}\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{__import__('os').environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)         # Pillow looks for gs afresh
    ix, extractor = _copy(archive, tmp_path)
    c = TestClient(_app(ix, extractor, auth="off"), base_url="http://localhost")
    r = c.post("/api/search", files={"file": ("lesion.jpg", EPS, "image/jpeg")}, data={"k": "1"})
    assert r.status_code == 415 and "PostScript" in r.json()["detail"]
    (tmp_path / "lesion.eps").write_bytes(EPS)                      # indexing decodes with the same allow-list
    with pytest.raises(ImageError, match="not an allowed image format"):
        load_image(tmp_path / "lesion.eps")
    assert not called.exists()
    from PIL import Image

    with pytest.raises(subprocess.CalledProcessError):              # the control: Pillow unrestricted
        Image.open(io.BytesIO(EPS)).load()
    assert called.exists()                                          # would have run the stand-in gs
    gif = io.BytesIO()
    lesion_image(1).save(gif, format="GIF")
    r = c.post("/api/search", files={"file": ("q.gif", gif.getvalue())}, data={"k": "1"})
    assert r.status_code == 415 and "GIF" in r.json()["detail"]


# ---------------------------------------------------------------- 3: proxies
def test_3_forwarded_for_is_believed_only_from_a_trusted_proxy(archive, tmp_path, caplog):
    ix, extractor = _copy(archive, tmp_path)

    def post(port, forwarded):
        head = (f"POST /api/ratings HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-For: {forwarded}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        return _raw(port, head, b"{}")[0]

    with serving(_app(ix, extractor, auth="off", rate_limit=6)) as port:       # bursts of 1
        assert post(port, "203.0.113.1") == 422
        assert post(port, "203.0.113.2") == 429                   # a rotating header is not a new client
    app = _app(ix, extractor, auth="off", rate_limit=6, trusted_proxies=("127.0.0.1",))
    with caplog.at_level(logging.INFO, logger="dermsearch.web.access"), serving(app) as port:
        assert post(port, "198.51.100.7, 203.0.113.3") == 422      # the proxy's own entry (the last) counts
        assert post(port, "198.51.100.7, 203.0.113.4") == 422
        assert post(port, "203.0.113.3") == 429
        _get(port, "/api/index%0a203.0.113.9%20admin%20GET%20/api/ratings-key.csv%20200")
    lines = [r.getMessage() for r in caplog.records if r.name == "dermsearch.web.access"]
    assert lines and all("\n" not in line and "\r" not in line for line in lines)
    assert any("%0a" in line or "\\n" in line for line in lines)


def test_3_access_log_fields_are_escaped(archive, tmp_path, caplog):
    ix, extractor = _copy(archive, tmp_path)
    c = TestClient(_app(ix, extractor, auth="off"), base_url="http://localhost")
    with caplog.at_level(logging.INFO, logger="dermsearch.web.access"):
        c.get("/api/images/" + quote("x\n127.0.0.1 root GET /api/ratings-key.csv 200", safe=""))
    lines = [r.getMessage() for r in caplog.records if r.name == "dermsearch.web.access"]
    assert len(lines) == 1 and "\n" not in lines[0] and len(lines[0].split(" ")) == 6


# ---------------------------------------------------------------- 4 and 6: limits before the bytes
def test_4_rating_sessions_are_rate_limited_and_capped(archive, tmp_path):
    ix, extractor = _copy(archive, tmp_path)
    c = TestClient(_app(ix, extractor, auth="off", rate_limit=6), base_url="http://localhost")
    assert c.post("/api/ratings/session").status_code == 200
    r = c.post("/api/ratings/session")
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    app = _app(ix, extractor, auth="off", open_rating_sessions=3)
    c = TestClient(app, base_url="http://localhost")
    tasks = [c.post("/api/ratings/session").json() for _ in range(8)]
    assert app.state.server.ratings.sessions() <= 3 + 1             # unrated sessions are bounded per user
    assert c.get(tasks[0]["items"][0]["image"]).status_code == 404    # the oldest unrated one is gone
    assert c.get(tasks[-1]["items"][0]["image"]).status_code == 200


def test_6_a_429_arrives_before_a_large_body_is_read(archive, tmp_path):
    ix, extractor = _copy(archive, tmp_path)
    big = 19 * 1024 * 1024
    head = (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {big}\r\n\r\n")
    app = _app(ix, extractor, auth="off", concurrency=1, queue=0)
    with serving(app) as port:
        # one upload under way (its headers and a first slice sent, the rest still to come) fills the pool
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(head.encode() + b"--b\r\n" + b"x" * 1000)
            deadline = time.monotonic() + 60                         # admitted: the server says so
            while app.state.server.pending["n"] < 1:
                assert time.monotonic() < deadline, "the first upload was never admitted"
                time.sleep(0.01)
            t0 = time.perf_counter()
            status, reply = _raw(port, head, timeout=5)              # headers only: no body is ever sent
            assert status == 429 and "retry-after: 1" in reply.lower() and time.perf_counter() - t0 < 5
    with serving(_app(ix, extractor, auth="off", rate_limit=6)) as port:
        body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.png\"\r\n\r\n" + _png() +
                b"\r\n--b--\r\n")
        assert _raw(port, head.replace(str(big), str(len(body))), body)[0] == 200
        status, reply = _raw(port, head, timeout=5)                  # over the rate: refused from the headers
        assert status == 429 and "a minute" in reply



def test_6_b_one_user_cannot_fill_the_queue(archive, tmp_path):
    """A signed-in user holds at most half of pool + queue: ana's uploads under way cannot lock bob out."""
    ix, extractor = _copy(archive, tmp_path)
    store = TokenStore.for_index(ix)
    ana, bob = store.create("ana", "rater"), store.create("bob", "rater")
    big = 19 * 1024 * 1024

    def head(token, length=big):
        return (f"POST /api/search HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {length}\r\n\r\n")

    app = _app(ix, extractor, concurrency=1, queue=2)                  # ana's share: 2 of the 3
    assert app.state.server.per_user == 2
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.png\"\r\n\r\n" + _png() +
            b"\r\n--b--\r\n")
    with serving(app) as port:
        slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(2)]
        try:
            for s in slow:                                           # two of ana's uploads under way
                s.sendall(head(ana).encode() + b"--b\r\n" + b"x" * 1000)
            deadline = time.monotonic() + 60
            while app.state.server.pending["n"] < 2:
                assert time.monotonic() < deadline, "ana's uploads were never admitted"
                time.sleep(0.01)
            status, reply = _raw(port, head(ana), timeout=5)           # a third: over her share, from the headers
            assert status == 429 and "already in progress" in reply
            assert _raw(port, head(bob, len(body)), body)[0] == 200     # bob still gets his search
        finally:
            for s in slow:
                s.close()


def test_6_c_a_flood_of_full_size_images_waits_in_its_own_pool(archive, tmp_path, monkeypatch):
    """Image GETs do work too (decoding an archive file): however many arrive at once, at most the
    image pool's size are decoded at a time, and the rest wait without a thread; /api/index answers."""
    import threading

    import httpx

    from dermsearch.web import state

    ix, extractor = _copy(archive, tmp_path)
    app = _app(ix, extractor, auth="off", concurrency=1)
    most = int(app.state.server.image_limiter.total_tokens)
    now, peak, lock, real = [0], [0], threading.Lock(), state.load_image
    release = threading.Event()          # every decode holds its pool slot until the test lets go

    def held_load(*a, **k):
        with lock:
            now[0] += 1
            peak[0] = max(peak[0], now[0])
        try:
            release.wait(120)
            return real(*a, **k)
        finally:
            with lock:
                now[0] -= 1

    monkeypatch.setattr(state, "load_image", held_load)
    with serving(app) as port:
        base = f"http://127.0.0.1:{port}"
        release.set()
        assert httpx.get(base + "/api/images", params={"id": "p0"}, timeout=60).status_code == 200   # now cached
        release.clear()
        codes: list[int] = []

        def get(i):
            r = httpx.get(base + "/api/images", params={"id": f"p{i % 6}", "size": "full"}, timeout=120)
            with lock:
                codes.append(r.status_code)

        threads = [threading.Thread(target=get, args=(i,)) for i in range(4 * most)]
        try:
            for t in threads:
                t.start()
            deadline = time.monotonic() + 60
            while now[0] < most:                 # the pool is full: every further decode must wait
                assert time.monotonic() < deadline, f"only {now[0]} of {most} decodes started"
                time.sleep(0.01)
            # While every slot is held, these answer: neither waits behind the queue of decodes (a
            # request that did would hang until the release below, and its timeout would fail the test).
            assert httpx.get(base + "/api/index", timeout=30).status_code == 200
            assert httpx.get(base + "/api/images", params={"id": "p0"}, timeout=30).status_code == 200
            assert now[0] == most and len(codes) == 0                          # still all held
        finally:
            release.set()
            for t in threads:
                t.join()
    assert codes == [200] * len(threads) and peak[0] <= most, (peak, most)


# ---------------------------------------------------------------- 5: rating posts
def test_5_rating_posts_are_capped_off_the_loop_and_refuse_duplicates(archive, tmp_path, monkeypatch):
    from dermsearch.web.ratings import RatingStore

    ix, extractor = _copy(archive, tmp_path)
    c = TestClient(_app(ix, extractor, auth="off"), base_url="http://localhost")
    task = c.post("/api/ratings/session").json()
    item = task["items"][0]["item"]
    huge = {"session": task["session"], "query_id": task["query_id"],
            "ratings": [{"item": item, "similar": True}] * 600_000}
    assert c.post("/api/ratings", json=huge).status_code == 413
    many = {**huge, "ratings": [{"item": item, "similar": True}] * 201}
    assert c.post("/api/ratings", json=many).status_code == 422
    conflicting = {**huge, "ratings": [{"item": item, "similar": True}, {"item": item, "similar": False}]}
    assert c.post("/api/ratings", json=conflicting).status_code == 422
    on_loop = []
    real = RatingStore.rate

    def rate(self, *a, **kw):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(self, *a, **kw)

    monkeypatch.setattr(RatingStore, "rate", rate)
    one = {**huge, "ratings": [{"item": item, "similar": True}]}
    assert c.post("/api/ratings", json=one).json() == {"stored": 1} and on_loop == [False]


# ---------------------------------------------------------------- 7: headers on every response
def test_7_refusals_and_errors_carry_the_security_headers(archive, tmp_path):
    ix, extractor = _copy(archive, tmp_path)
    rater = TokenStore.for_index(ix).create("ana", "rater")
    app = _app(ix, extractor, auth="on")
    c = TestClient(app, base_url="http://localhost")
    r401 = c.get("/api/index")
    r403 = c.get("/api/ratings-key.csv", headers={"Authorization": f"Bearer {rater}"})
    assert (r401.status_code, r403.status_code) == (401, 403)
    for r in (r401, r403):
        assert all(h in r.headers for h in SECURITY), r.status_code
    assert c.get("/api/index", headers={"Host": "evil.example"}).status_code == 400   # before authentication
    from dermsearch.web.state import server

    def broken():
        raise RuntimeError("boom")

    app.dependency_overrides[server] = broken
    r500 = c.get("/api/index", headers={"Authorization": f"Bearer {rater}"})
    assert r500.status_code == 500 and r500.json() == {"detail": "internal error"} and "boom" not in r500.text
    for r in (r401, r403, r500):
        for h in SECURITY:
            assert h in r.headers, (r.status_code, h)
        assert r.headers["cross-origin-resource-policy"] == "same-origin"


# ---------------------------------------------------------------- 8: sessions, not tokens, in cookies
def test_8_the_cookie_is_a_server_side_session(archive, tmp_path):
    ix, extractor = _copy(archive, tmp_path)
    store = TokenStore.for_index(ix)
    token = store.create("ana", "rater")
    c = TestClient(_app(ix, extractor), base_url="http://localhost")
    r = c.post("/api/login", json={"token": token})
    cookie = r.headers["set-cookie"]
    value = cookie.split(";")[0].split("=", 1)[1]
    assert token not in cookie and len(value) >= 40 and "httponly" in cookie.lower()
    assert c.get("/api/index").status_code == 200
    assert c.post("/api/logout").json() == {"signed_out": True}
    replay = TestClient(c.app, base_url="http://localhost", cookies={"dermsearch_session": value})
    assert replay.get("/api/index").status_code == 401                    # logout ended it on the server
    c.post("/api/login", json={"token": token})
    assert c.get("/api/index").status_code == 200
    store.revoke("ana")
    assert c.get("/api/index").status_code == 401                         # and so does revoking the token



def test_8b_one_token_cannot_push_out_other_users_sessions(archive, tmp_path):
    ix, extractor = _copy(archive, tmp_path)
    store = TokenStore.for_index(ix)
    ana, bob = store.create("ana", "rater"), store.create("bob", "rater")
    app = _app(ix, extractor)
    app.state.server.sessions.most = 40                     # a small table, to fill it quickly
    first = TestClient(app, base_url="http://localhost")
    assert first.post("/api/login", json={"token": bob}).status_code == 200
    spam = TestClient(app, base_url="http://localhost")
    cookies = []
    for _ in range(60):                                     # one token signs in again and again
        spam.post("/api/login", json={"token": ana})
        cookies.append(spam.cookies.get("dermsearch_session"))
    assert first.get("/api/index").status_code == 200       # bob's session is still there
    per_token = app.state.server.sessions.per_token
    old = TestClient(app, base_url="http://localhost", cookies={"dermsearch_session": cookies[0]})
    assert old.get("/api/index").status_code == 401         # ana's oldest sessions ended first
    recent = TestClient(app, base_url="http://localhost", cookies={"dermsearch_session": cookies[-per_token]})
    assert recent.get("/api/index").status_code == 200


def test_no_server_path_in_any_error(archive, tmp_path, monkeypatch, caplog):
    """An indexed file that cannot be read (the decoder's reason names its path) and a user error
    naming the index directory: the client sees neither path; the server's log keeps the reason."""
    from dermsearch.errors import ConfigError
    from dermsearch.extract import ImageError

    ix, extractor = _copy(archive, tmp_path)
    app = _app(ix, extractor, auth="off")
    c = TestClient(app, base_url="http://localhost")
    secret = str(tmp_path / "archive" / "i3.png")

    def denied(*a, **k):
        raise ImageError(f"corrupt or truncated image ([Errno 13] Permission denied: '{secret}')")

    monkeypatch.setattr("dermsearch.web.state.load_image", denied)
    monkeypatch.setattr("dermsearch.web.routes.search.load_image", denied)
    with caplog.at_level(logging.WARNING, logger="dermsearch.web"):
        r = c.get("/api/images/p3")
        sheet = c.post("/api/search", data={"image_id": "p3", "format": "html"})
    assert (r.status_code, sheet.status_code) == (410, 410)
    assert secret not in r.text + sheet.text and str(tmp_path) not in r.text + sheet.text
    assert "Permission denied" in caplog.text
    monkeypatch.undo()

    def broken(*a, **k):
        raise ConfigError(f"the index at {ix.resolve()} is being rewritten; retry")

    monkeypatch.setattr(Searcher, "search", broken)
    r = c.post("/api/search", files={"file": ("q.png", _png())})
    assert r.status_code == 422 and "<index> is being rewritten" in r.json()["detail"]
    assert str(tmp_path) not in r.text

    # the server's own trouble (here: full rows kept elsewhere, named by their place): a 503 that names
    # nothing of the server, the reason in its log; a path that merely starts like the index's is not cut
    from dermsearch.search.fast_rows import FullRowsError

    elsewhere = f"{ix.resolve()}2/tier/rows.npy"

    def gone(*a, **k):
        raise FullRowsError(f"the full style rows at {elsewhere} cannot be read")

    monkeypatch.setattr(Searcher, "search", gone)
    with caplog.at_level(logging.ERROR, logger="dermsearch.web"):
        r = c.post("/api/search", files={"file": ("q.png", _png())})
    assert r.status_code == 503 and str(tmp_path) not in r.text and "<index>" not in r.text
    assert elsewhere in caplog.text


def test_8c_over_https_the_cookie_is_host_only_and_secure(archive, tmp_path):
    """Behind TLS the session cookie is '__Host-' (Secure, this host only, path /): a sibling
    subdomain's planted 'dermsearch_session' is ignored; plain http keeps the plain name."""
    ix, extractor = _copy(archive, tmp_path)
    token = TokenStore.for_index(ix).create("ana", "rater")
    app = _app(ix, extractor)
    c = TestClient(app, base_url="https://localhost")
    cookie = c.post("/api/login", json={"token": token}).headers["set-cookie"]
    name, sid = cookie.split(";")[0].split("=", 1)
    attrs = cookie.lower()
    assert name == "__Host-dermsearch_session" and "secure" in attrs and "path=/" in attrs and "domain" not in attrs
    assert c.get("/api/index").status_code == 200
    planted = TestClient(app, base_url="https://localhost", cookies={"dermsearch_session": sid})
    assert planted.get("/api/index").status_code == 401                  # only the __Host- name counts
    out = c.post("/api/logout")
    assert out.json() == {"signed_out": True} and "secure" in out.headers["set-cookie"].lower()
    assert c.get("/api/index").status_code == 401
    plain = TestClient(app, base_url="http://localhost")
    assert plain.post("/api/login", json={"token": token}).headers["set-cookie"].startswith("dermsearch_session=")

# ---------------------------------------------------------------- 9: no JPEG comments in served images
def test_9_served_images_carry_no_jpeg_comment(archive, tmp_path):
    root, _ = archive
    assert COMMENT in (root / "c.jpg").read_bytes()
    ix, extractor = _copy(archive, tmp_path)
    c = TestClient(_app(ix, extractor, auth="off"), base_url="http://localhost")
    for size in ("thumb", "full"):
        r = c.get("/api/images/p0", params={"size": size})
        assert r.status_code == 200 and COMMENT not in r.content and b"PATIENT" not in r.content
    sheet = c.post("/api/search", files={"file": ("q.png", _png(0))}, data={"k": "8", "format": "html"}).text
    uris = re.findall(r"data:image/jpeg;base64,([A-Za-z0-9+/=]+)", sheet)
    assert len(uris) >= 8 and not any(b"PATIENT" in base64.b64decode(u) for u in uris)


# ---------------------------------------------------------------- 10: failed sign-ins throttled
def test_10_failed_sign_ins_are_throttled_per_address_and_per_name(archive, tmp_path):
    """Only failures count and only failures wait: behind a proxy every client is one address, so
    others' bad tokens must never lock out a user with a valid one."""
    ix, extractor = _copy(archive, tmp_path)
    token = TokenStore.for_index(ix).create("ana", "rater")
    c = TestClient(_app(ix, extractor), base_url="http://localhost")
    assert all(c.post("/api/login", json={"token": f"guess{i}"}).status_code == 401 for i in range(5))
    r = c.post("/api/login", json={"token": "guess5"})                 # a 6th failure waits
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert c.post("/api/login", json={"token": token}).status_code == 200       # the right one passes
    r = c.get("/api/index", headers={"Authorization": "Bearer nope"})  # bad bearer tokens count the same
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert c.get("/api/index", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # per name, across addresses (a trusted proxy names them)
    app = _app(ix, extractor, trusted_proxies=("127.0.0.1",))
    c = TestClient(app, base_url="http://localhost", client=("127.0.0.1", 40000))
    for i in range(5):
        hdr = {"X-Forwarded-For": f"198.51.100.{i}"}
        assert c.post("/api/login", json={"token": f"guess{i}", "name": "ana"}, headers=hdr).status_code == 401
    r = c.post("/api/login", json={"token": "guess9", "name": "ana"}, headers={"X-Forwarded-For": "198.51.100.99"})
    assert r.status_code == 429
    r = c.post("/api/login", json={"token": token, "name": "ana"}, headers={"X-Forwarded-For": "198.51.100.99"})
    assert r.status_code == 200
    assert c.post("/api/login", json={"token": "guess9"}, headers={"X-Forwarded-For": "198.51.100.98"}).status_code \
        == 401                                                        # another address, no name: its own count


def test_10b_bad_bearer_tokens_never_lock_out_a_valid_one(archive, tmp_path):
    """Five bad tokens from one address (every client, behind a proxy without --trusted-proxy),
    then a good one: 200; a 6th bad one: 429."""
    ix, extractor = _copy(archive, tmp_path)
    token = TokenStore.for_index(ix).create("ana", "rater")
    c = TestClient(_app(ix, extractor), base_url="http://localhost")
    for i in range(5):
        assert c.get("/api/index", headers={"Authorization": f"Bearer bad{i}"}).status_code == 401
    assert c.get("/api/index", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = c.get("/api/index", headers={"Authorization": "Bearer bad5"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
    assert c.get("/api/index", headers={"Authorization": f"Bearer {token}"}).status_code == 200


# ---------------------------------------------------------------- 11, 12, 14, 16
def test_11_an_id_with_a_newline_is_servable(archive, tmp_path):
    ix, extractor = _copy(archive, tmp_path)
    c = TestClient(_app(ix, extractor, auth="off"), base_url="http://localhost")
    assert c.get("/api/images/" + quote(NEWLINE_ID, safe="")).status_code == 200
    assert c.get("/api/masks/" + quote(NEWLINE_ID, safe="")).status_code == 200



@pytest.mark.slow
def test_11b_dot_ids_are_servable_from_the_page(chromium, tiny_extractor, tmp_path):
    """'.' and '..' as ids: a browser drops them from a URL path (dot segments, even percent-encoded),
    so the page asks for every image by ``?id=``; each of the page's URLs answers 200 in Chromium."""
    from dermsearch.index.build import build_index

    from .conftest import running_server

    ids = [".", "..", "%2e%2e", NEWLINE_ID, "a/b"]
    rows = [{"image_id": i, "file": f"i{n}.png", "diagnosis": "nevus", "lesion_id": f"L{n}"} for n, i in enumerate(ids)]
    build_index(labelled_archive(tmp_path, rows, folder="."), tmp_path / "ix", extractor=tiny_extractor)
    page = chromium.new_page()
    with running_server(_app(tmp_path / "ix", tiny_extractor, auth="off")) as base:
        page.goto(base.replace("127.0.0.1", "localhost") + "/")
        got = page.evaluate("""async ids => Promise.all(ids.flatMap(id => [imageUrl(id), imageUrl(id, 'full'),
            maskUrl(id)]).map(async u => { const r = await fetch(u); return [u, r.status,
            r.headers.get('content-type')]; }))""", ids)
        # the path form cannot carry them through a browser: what the page used before
        old = page.evaluate("async id => (await fetch('/api/images/' + encodeURIComponent(id))).status", "..")
    page.close()
    assert [s for _, s, _ in got] == [200] * 3 * len(ids), got
    assert all(t == ("image/png" if "masks" in u else "image/jpeg") for u, _, t in got), got
    assert old == 404

def test_12_filter_values_with_commas_are_selectable(archive, tmp_path):
    ix, extractor = _copy(archive, tmp_path)
    c = TestClient(_app(ix, extractor, auth="off"), base_url="http://localhost")
    js = c.post("/api/search", files={"file": ("q.png", _png())}, data={"k": "0", "diagnosis": [COMMA_DX]}).json()
    assert js["candidates"] == 2
    assert all(h["diagnosis"] == COMMA_DX for hits in js["results"].values() for h in hits)
    both = c.post("/api/search", files={"file": ("q.png", _png())},
                  data={"k": "0", "diagnosis": [COMMA_DX, "nevus"]}).json()
    assert both["candidates"] == 8


def test_14_16_images_are_same_origin_and_privately_cached(archive, tmp_path):
    ix, extractor = _copy(archive, tmp_path)
    c = TestClient(_app(ix, extractor, auth="off"), base_url="http://localhost")
    for path in ("/api/images/p3", "/api/images/p3?size=full", "/api/masks/p3"):
        r = c.get(path)
        assert r.headers["cross-origin-resource-policy"] == "same-origin", path
        assert r.headers["cache-control"].startswith("private"), path


# ---------------------------------------------------------------- 15: the rating protocol
def test_15_rating_urls_reveal_nothing_and_judgements_are_kept(archive, tmp_path):
    ix, extractor = _copy(archive, tmp_path)
    c = TestClient(_app(ix, extractor, auth="off"), base_url="http://localhost")
    a, b = (c.post("/api/ratings/session", params={"seed": 1}).json() for _ in range(2))
    assert [it["image"] for it in a["items"]] != [it["image"] for it in b["items"]]     # no client seed
    ids = [f"p{i}" for i in range(8)] + [quote(NEWLINE_ID, safe="")]
    for it in a["items"]:
        assert not any(i in it["image"] for i in ids) and not any(i in it["item"] for i in ids)
        assert c.get(it["image"]).status_code == 200
    post = {"session": a["session"], "query_id": a["query_id"],
            "ratings": [{"item": it["item"], "similar": True} for it in a["items"]]}
    assert c.post("/api/ratings", json=post).status_code == 200
    flipped = {**post, "ratings": [{**r, "similar": False} for r in post["ratings"]]}
    assert c.post("/api/ratings", json=flipped).status_code == 409          # no silent overwrite
    assert c.post("/api/ratings", json={**flipped, "edit": True}).status_code == 200
    rows = list(csv.reader(io.StringIO(c.get("/api/ratings.csv").text)))[1:]     # ids may hold commas, newlines
    assert len(rows) == len(post["ratings"]) and all(r[2] == "0" for r in rows)
    assert json.loads(c.get("/api/whoami").text)["auth"] is False


# ---------------------------------------------------------------- 13: no external request from a bundled page
@pytest.mark.slow
def test_13_bundled_pages_make_no_external_request(chromium, archive, tmp_path):
    from .conftest import running_server

    ix, extractor = _copy(archive, tmp_path)
    outside: list[str] = []
    page = chromium.new_page()
    with running_server(_app(ix, extractor, auth="off")) as base:
        def record(route):
            url = route.request.url
            if url.startswith(("http:", "https:")) and not url.startswith(base):
                outside.append(url)
                return route.abort()
            return route.continue_()

        page.route("**/*", record)
        page.goto(base + "/redoc")
        page.get_by_text("Search with an uploaded image").first.wait_for()     # ReDoc rendered the API
        page.wait_for_timeout(1500)
        page.goto(base + "/docs")
        page.locator(".opblock").first.wait_for()                            # so did Swagger UI
        for path in ("/", "/rate", "/login"):
            page.goto(base + path)
            page.wait_for_load_state("networkidle")
    page.close()
    assert outside == []
