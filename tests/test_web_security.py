"""The web app against a hostile client and hostile data: injection, forged requests, limits, stalls."""

from __future__ import annotations

import csv
import http.client
import io
import json
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dermsearch.search import Searcher
from dermsearch.web.app import WebConfig, create_app
from dermsearch.web.auth import TokenStore
from dermsearch.web.security import CSP

from .conftest import indexed_archive, lesion_image, running_server

HOSTILE_IDS = ['x" onerror="alert(1)', "<img src=x onerror=alert(2)>", "a'b?c#d", "plain"]


@pytest.fixture(scope="module")
def hostile_index(tiny_extractor, tmp_path_factory):
    """Ids, diagnoses and metadata that would run script if a page built markup from them."""
    root = tmp_path_factory.mktemp("hostile")
    rows = [{"image_id": f"{image_id}{i}", "file": f"i{i}.png", "diagnosis": "<img src=x onerror=alert(3)>"
             if i % 2 else "nv", "lesion_id": f"L{i}", "sex": '"><script>alert(4)</script>'}
            for i, image_id in enumerate(HOSTILE_IDS * 2)]
    indexed_archive(root, rows, tiny_extractor, folder=".")
    return root, tiny_extractor


def _app(hostile_index, **cfg):
    root, extractor = hostile_index
    cfg.setdefault("auth", "off")                    # these tests are about other guards; auth has its own
    return create_app(root / "ix", WebConfig(**cfg), searcher=Searcher(root / "ix", extractor=extractor))


@pytest.fixture(scope="module")
def client(hostile_index):
    return TestClient(_app(hostile_index, max_upload_bytes=200_000, max_pixels=1_000_000, max_k=6),
                      base_url="http://localhost")


def _png(size=(96, 96)) -> bytes:
    buf = io.BytesIO()
    lesion_image(7, size[0]).resize(size).save(buf, format="PNG")
    return buf.getvalue()


def test_security_headers_and_no_inline_script(client):
    r = client.get("/")
    script_src = next(d for d in CSP.split(";") if d.strip().startswith("script-src"))
    assert r.headers["content-security-policy"] == CSP and script_src.strip() == "script-src 'self'"
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert r.headers["referrer-policy"] == "no-referrer" and "frame-ancestors 'none'" in CSP
    for page in ("/", "/rate"):
        html = client.get(page).text
        assert "<script>" not in html and '<script src="/static/' in html
    assert client.get("/static/rate.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/api/index").headers["content-security-policy"] == CSP


def test_foreign_host_and_cross_origin_posts_are_refused(client):
    assert client.get("/api/index", headers={"Host": "evil.example"}).status_code == 400
    assert client.get("/api/index", headers={"Host": "localhost:8000"}).status_code == 200
    task = client.post("/api/ratings/session", params={"seed": 1}).json()
    body = {"session": task["session"], "query_id": task["query_id"],
            "ratings": [{"item": task["items"][0]["item"], "similar": True}]}
    forged = client.post("/api/ratings", content=json.dumps(body), headers={"Content-Type": "text/plain"})
    assert forged.status_code == 415
    other = client.post("/api/ratings", json=body, headers={"Origin": "http://evil.example"})
    assert other.status_code == 403
    assert client.post("/api/ratings", json=body, headers={"Origin": "http://localhost"}).json() == {"stored": 1}


def test_strict_booleans(client):
    task = client.post("/api/ratings/session", params={"seed": 2}).json()
    for bad in ("false", 0, "0", None):
        r = client.post("/api/ratings", json={"session": task["session"], "query_id": task["query_id"],
                                              "ratings": [{"item": task["items"][0]["item"], "similar": bad}]})
        assert r.status_code == 422, bad


def test_limits_before_work(client):
    # announced too large: refused before the body is read
    r = client.post("/api/search", content=b"x" * 10, headers={"Content-Length": str(10**9),
                                                                "Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413
    # streamed without a length: cut off at the limit
    def chunks():
        for _ in range(100):
            yield b"y" * 65536
    r = client.post("/api/search", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 413 and "larger than" in r.json()["detail"]
    # too many pixels: refused before decoding
    buf = io.BytesIO()
    Image.new("RGB", (1200, 1000), (200, 150, 120)).save(buf, format="PNG")      # small file, many pixels
    r = client.post("/api/search", files={"file": ("big.png", buf.getvalue())})
    assert r.status_code == 415 and "too large" in r.json()["detail"]
    # k = 0 is capped in the web API
    js = client.post("/api/search", files={"file": ("q.png", _png())}, data={"k": "0"}).json()
    assert js["k"] == 0 and all(len(h) == 6 for h in js["results"].values()) and js["candidates"] == 8
    # ids, never server paths; the query mask only on request, as PNG
    assert all("path" not in h for hits in js["results"].values() for h in hits)
    assert "query_mask" not in js and "query_mask_png" not in js
    js = client.post("/api/search", files={"file": ("q.png", _png())}, data={"k": "1", "query_mask": "png"}).json()
    assert js["query_mask_png"].startswith("data:image/png;base64,")


def test_hostile_ids_are_served_by_id_and_quoted(client):
    task = client.post("/api/ratings/session", params={"seed": 0}).json()
    for it in task["items"]:
        assert '"' not in it["image"] and "<" not in it["image"] and " " not in it["image"]
        assert client.get(it["image"]).status_code == 200


def test_busy_server_answers_429_and_keeps_serving(hostile_index):
    """One search at a time, no queue: concurrent searches beyond it get 429 + Retry-After, and the
    event loop still answers /api/index while a search runs (held here until the end, so nothing is
    timed: a request that waited behind it would hang until its own timeout)."""
    import threading

    root, extractor = hostile_index
    searcher = Searcher(root / "ix", extractor=extractor)
    inside, release, real = threading.Event(), threading.Event(), searcher.search

    def held_search(*a, **k):
        inside.set()
        release.wait(120)
        return real(*a, **k)

    searcher.search = held_search
    app = create_app(root / "ix", WebConfig(auth="off", concurrency=1, queue=0, allowed_hosts=("127.0.0.1",)),
                     searcher=searcher)
    body, boundary = _png((200, 200)), "bnd"
    payload = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"q.png\"\r\n"
               f"Content-Type: image/png\r\n\r\n").encode() + body + f"\r\n--{boundary}--\r\n".encode()

    def search():
        c = http.client.HTTPConnection(host, port, timeout=120)
        c.request("POST", "/api/search", payload, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        r = c.getresponse()
        return r.status, r.getheader("Retry-After")

    with running_server(app) as url, ThreadPoolExecutor(8) as pool:
        host, port = url.split("//")[1].split(":")[0], int(url.rsplit(":", 1)[1])
        try:
            futures = [pool.submit(search) for _ in range(6)]
            assert inside.wait(60), "no search was admitted"
            deadline = time.monotonic() + 60
            while sum(f.done() for f in futures) < 5:        # the other five are refused while it is held
                assert time.monotonic() < deadline, "searches over the limit were not refused"
                time.sleep(0.01)
            for _ in range(3):
                c = http.client.HTTPConnection(host, port, timeout=30)
                c.request("GET", "/api/index")
                assert c.getresponse().status == 200
            assert sum(f.done() for f in futures) == 5        # the admitted one is still held
        finally:
            release.set()
        results = Counter(f.result() for f in futures)
    assert results == Counter({(200, None): 1, (429, "1"): 5}), results


@pytest.mark.slow
def test_hostile_data_renders_inert_in_the_browser(chromium, hostile_index, tmp_path):
    query = tmp_path / "q.png"
    query.write_bytes(_png())
    dialogs = []
    page = chromium.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    with running_server(_app(hostile_index)) as base:
        page.goto(base + "/rate")
        page.wait_for_selector("#items .item img")
        page.wait_for_timeout(300)
        assert page.locator("#items .item").count() >= 1
        # the CSP forbids eval, so these checks use selectors, not JavaScript strings
        assert page.locator("[onerror]").count() == 0 and page.locator("script:not([src])").count() == 0
        page.goto(base + "/")
        page.set_input_files("#file", str(query))
        page.locator("#results .card").nth(9).wait_for()
        page.wait_for_timeout(300)
        assert page.locator("[onerror]").count() == 0 and page.locator("script:not([src])").count() == 0
        texts = page.locator("#results .hid").all_inner_texts()
        assert any(t.startswith('x" onerror="alert(1)') for t in texts)      # shown as text, verbatim
        assert dialogs == []
        # the contact sheet of the same search (export), opened as a page
        sheet = page.request.post(base + "/api/search", multipart={
            "file": {"name": "q.png", "mimeType": "image/png", "buffer": _png()}, "k": "5", "format": "html"}).text()
        page.set_content(sheet)
        page.wait_for_timeout(300)
        assert page.locator("[onerror]").count() == 0 and page.locator("script").count() == 0
        assert page.get_by_text('x" onerror="alert(1)', exact=False).count() >= 1
        assert dialogs == []
    page.close()


# ------------------------------------------------------------------ authentication
@pytest.fixture
def auth_index(hostile_index, tmp_path):
    """A copy of the index with a rater, a second rater and an admin token."""
    root, extractor = hostile_index
    ix = tmp_path / "ix"
    shutil.copytree(root / "ix", ix)
    store = TokenStore.for_index(ix)
    tokens = {name: store.create(name, role) for name, role in (("ana", "rater"), ("bo", "rater"), ("root", "admin"))}
    return ix, extractor, tokens


def _tokens(capsys) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_token_cli_hashes_at_rest_and_revokes(hostile_index, tmp_path, capsys):
    from dermsearch.cli.main import main

    root, _ = hostile_index
    ix = tmp_path / "ix"
    shutil.copytree(root / "ix", ix)
    assert main(["token", "create", str(ix), "--name", "ana"]) == 0
    token = _tokens(capsys)[-1]
    stored = (ix / "web-tokens.json").read_text()
    assert token not in stored and "sha256" in stored and oct((ix / "web-tokens.json").stat().st_mode)[-3:] == "600"
    assert TokenStore.for_index(ix).verify(token).name == "ana"
    assert main(["token", "create", str(ix), "--name", "ana"]) == 2            # one active token per user
    assert main(["token", "list", str(ix)]) == 0 and "ana\trater" in capsys.readouterr().out
    assert main(["token", "revoke", str(ix), "--name", "ana"]) == 0
    assert TokenStore.for_index(ix).verify(token) is None


def test_a_revocation_within_one_mtime_tick_is_seen(tmp_path):
    """A server's token store caches the file; a revocation written within the same tick of the
    file system's clock (the same mtime) still takes effect at its next request."""
    import os

    server, cli = TokenStore(tmp_path / "web-tokens.json"), TokenStore(tmp_path / "web-tokens.json")
    token = cli.create("ana", "rater")
    assert server.verify(token).name == "ana"                       # cached now
    before = (tmp_path / "web-tokens.json").stat()
    assert cli.revoke("ana") == 1
    os.utime(tmp_path / "web-tokens.json", ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (tmp_path / "web-tokens.json").stat().st_mtime_ns == before.st_mtime_ns
    assert server.verify(token) is None


def test_auth_on_every_endpoint_and_roles(auth_index):
    ix, extractor, tokens = auth_index
    ana, bo, root = tokens["ana"], tokens["bo"], tokens["root"]
    app = create_app(ix, WebConfig(), searcher=Searcher(ix, extractor=extractor))
    c = TestClient(app, base_url="http://localhost")
    spec_paths = [p for p in app.openapi()["paths"] if p.startswith("/api/") and p not in
                  ("/api/login", "/api/logout", "/api/whoami")]
    assert len(spec_paths) >= 9
    for path in [*spec_paths, "/openapi.json", "/docs", "/redoc"]:
        p = path.replace("{image_id}", "plain0").replace("{session}", "s").replace("{item}", "query")
        for method in ("GET", "POST"):
            r = c.request(method, p)
            assert r.status_code in (401, 405), (method, p, r.status_code)
    assert c.get("/").status_code == 200 and c.get("/static/search.js").status_code == 200   # no data in them
    bearer = {"Authorization": f"Bearer {ana}"}
    assert c.get("/api/index", headers=bearer).status_code == 200
    assert c.get("/api/index", headers={"Authorization": "Bearer nope"}).status_code == 401
    # raters rate as themselves, only their own sessions; only an admin exports
    task = c.post("/api/ratings/session", headers=bearer).json()
    mark = {"session": task["session"], "query_id": task["query_id"], "rater": "=HYPERLINK(\"x\")",
            "ratings": [{"item": task["items"][0]["item"], "similar": True}]}
    assert c.post("/api/ratings", json=mark, headers={"Authorization": f"Bearer {bo}"}).status_code == 403
    assert c.post("/api/ratings", json=mark, headers=bearer).json() == {"stored": 1}
    assert c.get("/api/ratings.csv", headers=bearer).status_code == 403
    assert c.get("/api/ratings-key.csv", headers=bearer).status_code == 403
    admin = {"Authorization": f"Bearer {root}"}
    rows = list(csv.DictReader(io.StringIO(c.get("/api/ratings.csv", headers=admin).text)))
    mine = [r for r in rows if r["item"].startswith(task["session"] + "/")]
    assert [r["rater"] for r in mine] == ["ana"]                   # the token's user, not the posted name
    # the browser pages: a cookie from /api/login
    assert c.post("/api/login", json={"token": "wrong"}).status_code == 401
    r = c.post("/api/login", json={"token": bo})
    assert r.json() == {"user": "bo", "role": "rater"}
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    assert c.get("/api/whoami").json()["user"] == "bo" and c.get("/api/index").status_code == 200


def test_csv_exports_are_formula_safe(client):
    task = client.post("/api/ratings/session", params={"seed": 5}).json()
    client.post("/api/ratings", json={"session": task["session"], "query_id": task["query_id"], "rater": "=1+2",
                                      "ratings": [{"item": task["items"][0]["item"], "similar": False}]})
    rows = list(csv.DictReader(io.StringIO(client.get("/api/ratings.csv").text)))
    assert any(r["rater"] == "'=1+2" for r in rows) and not any(r["rater"].startswith("=") for r in rows)


def test_serve_refuses_to_expose_an_index_without_authentication(hostile_index, capsys):
    from dermsearch.cli.main import main

    root, _ = hostile_index
    assert main(["serve", str(root / "ix"), "--host", "0.0.0.0", "--port", "1", "--auth", "off"]) == 2
    assert "without authentication" in capsys.readouterr().err
    assert main(["serve", str(root / "ix"), "--port", "1", "--auth", "off", "--trusted-proxy", "127.0.0.1"]) == 2
    assert "--auth on" in capsys.readouterr().err


@pytest.mark.slow
def test_browser_sign_in_flow(chromium, auth_index):
    ix, extractor, tokens = auth_index
    app = create_app(ix, WebConfig(), searcher=Searcher(ix, extractor=extractor))
    page = chromium.new_page()
    with running_server(app) as base:
        page.goto(base + "/")
        page.wait_for_url("**/login")                         # no token: sent to the sign-in page
        page.fill("#token", "not-a-token")
        page.click("#go")
        page.locator("#status", has_text="unknown or revoked token").wait_for()
        page.fill("#token", tokens["ana"])
        page.click("#go")
        page.wait_for_url(base + "/")
        page.locator("#facts", has_text="8 images").wait_for()
        assert page.request.get(base + "/api/whoami").json()["user"] == "ana"
        page.locator("#signout", has_text="sign out (ana)").click()         # ends the session on the server
        page.wait_for_url("**/login")
        assert page.request.get(base + "/api/whoami").json()["user"] is None
        page.goto(base + f"/login#token={tokens['bo']}")                     # the link 'serve' prints
        page.wait_for_url(base + "/")
        assert "token" not in page.url and page.request.get(base + "/api/whoami").json()["user"] == "bo"
    page.close()


def test_live_archive_removed_image_is_gone_at_once(hostile_index, tmp_path):
    """A patient withdraws consent: 'index --remove' in another process, while the server runs."""
    from dermsearch.index import Index

    root, extractor = hostile_index
    ix = tmp_path / "ix"
    shutil.copytree(root / "ix", ix)
    c = TestClient(create_app(ix, WebConfig(max_k=8, auth="off"), searcher=Searcher(ix, extractor=extractor)),
                   base_url="http://localhost")
    before = c.get("/api/index").json()
    victim = "plain3"
    assert c.get(f"/api/images/{victim}").status_code == 200
    hits = c.post("/api/search", files={"file": ("q.png", _png())}, data={"k": "0"}).json()["results"]["cosine"]
    assert victim in [h["id"] for h in hits]
    other = Index.open(ix)                               # a separate writer, as the CLI would be
    with other.writing():
        other.remove([victim])
    after = c.get("/api/index").json()
    assert after["version"] > before["version"] and after["images"] == before["images"] - 1
    assert c.get(f"/api/images/{victim}").status_code == 404
    assert c.get(f"/api/masks/{victim}").status_code == 404
    js = c.post("/api/search", files={"file": ("q.png", _png())}, data={"k": "0"}).json()
    assert js["candidates"] == 7 and all(h["id"] != victim for hs in js["results"].values() for h in hs)


def test_rating_protocol_sessions_unrated_and_strict(hostile_index, tmp_path):
    from dermsearch.evaluate.rating import score_ratings

    root, extractor = hostile_index
    ix = tmp_path / "ix"
    shutil.copytree(root / "ix", ix)
    (ix / "ratings.sqlite").unlink(missing_ok=True)
    one = "plain3"
    c = TestClient(create_app(ix, WebConfig(rating_k=3, rating_query_ids=frozenset({one}), auth="off"),
                              searcher=Searcher(ix, extractor=extractor)), base_url="http://localhost")
    a, b, unrated = (c.post("/api/ratings/session").json() for _ in range(3))
    assert a["query_id"] == b["query_id"] == unrated["query_id"] == one         # --query-split honoured
    for task, similar in ((a, True), (b, False)):
        r = c.post("/api/ratings", json={"session": task["session"], "query_id": task["query_id"],
                                         "ratings": [{"item": it["item"], "similar": similar} for it in task["items"]]})
        assert r.status_code == 200
    key = c.get("/api/ratings-key.csv").text
    assert unrated["session"] not in key and a["session"] in key and b["session"] in key
    (tmp_path / "key.csv").write_text(key)
    (tmp_path / "ratings.csv").write_text(c.get("/api/ratings.csv").text)
    scores = score_ratings(tmp_path / "key.csv", tmp_path / "ratings.csv", bootstrap=50)
    for m, v in scores.items():            # every top-3 image similar in one session, none in the other
        assert v["queries"] == 2 and v["success_rate"] == pytest.approx(0.5), m


def test_per_client_rate_limit(hostile_index):
    from dermsearch.web.app import RateLimiter

    limiter = RateLimiter(60)                                  # 1 a second, bursts of 10
    assert [limiter.take("a") for _ in range(10)] == [0] * 10
    assert limiter.take("a") >= 1 and limiter.take("b") == 0   # per client
    assert RateLimiter(0).take("a") == 0
    c = TestClient(_app(hostile_index, rate_limit=6), base_url="http://localhost")
    assert c.post("/api/search", files={"file": ("q.png", _png())}, data={"k": "1"}).status_code == 200
    r = c.post("/api/search", files={"file": ("q.png", _png())}, data={"k": "1"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1 and "a minute" in r.json()["detail"]


def test_api_docs_are_served_from_local_files(client):
    for page, asset in (("/docs", "/static/docs/swagger-ui-bundle.js"), ("/redoc", "/static/docs/redoc.standalone.js")):
        html = client.get(page).text
        assert asset in html and "cdn" not in html.lower() and "fonts.googleapis" not in html
        r = client.get(asset)
        assert r.status_code == 200 and len(r.content) > 100_000
    assert client.get("/static/docs/../../app.py").status_code == 404


def test_live_archive_in_fast_mode_falls_back_to_exact(hostile_index, tmp_path):
    from dermsearch.index import Index
    from dermsearch.search.fast import FastConfig
    from dermsearch.search.fast_build import optimize

    root, extractor = hostile_index
    ix = tmp_path / "ix"
    shutil.copytree(root / "ix", ix)
    optimize(Index.open(ix), FastConfig(style_dims=2, feature_dims=2, mask_grid=4, candidates=8,
                                        normaliser_candidates=2))
    searcher = Searcher(ix, extractor=extractor, mode="fast")
    c = TestClient(create_app(ix, WebConfig(auth="off"), searcher=searcher), base_url="http://localhost")
    assert c.post("/api/search", files={"file": ("q.png", _png())}, data={"k": "3"}).status_code == 200
    other = Index.open(ix)
    with other.writing():
        other.remove(["plain3"])
    js = c.post("/api/search", files={"file": ("q.png", _png())}, data={"k": "3"}).json()
    assert js["candidates"] == 7 and searcher.mode == "exact"     # stale fast files: exact, still correct
    assert c.get("/api/images/plain3").status_code == 404
