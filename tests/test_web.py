"""REST API (FastAPI TestClient) and the page in a real browser (Playwright + Debian chromium)."""

from __future__ import annotations

import csv
import io
import json
import socket
import time

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from dermsearch.index.build import build_index
from dermsearch.runtime import Runtime
from dermsearch.search import MEASURES
from dermsearch.web.app import WebConfig, create_app

from .conftest import REPO, running_server

SAMPLE = REPO / "examples" / "isic-sample" / "labels.csv"
QUERY = REPO / "examples" / "queries" / "ISIC_0000022.jpg"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("web") / "ix"
    build_index(SAMPLE, d, runtime=Runtime(backend="torch"))   # no ONNX export to wait for
    return d


@pytest.fixture(scope="module")
def client(index_dir):
    return TestClient(create_app(index_dir, WebConfig(max_upload_bytes=300_000, auth="off")), base_url="http://localhost")


def test_index_facts(client):
    f = client.get("/api/index").json()
    assert f["images"] == 48 and set(f["diagnoses"]) == {"nevus", "melanoma"}
    assert f["measures"] == list(MEASURES) and f["sexes"] == ["female", "male"] and f["has_masks"]


def test_search_upload(client):
    with open(QUERY, "rb") as fh:
        r = client.post("/api/search", files={"file": ("q.jpg", fh, "image/jpeg")}, data={"k": "4"})
    assert r.status_code == 200
    js = r.json()
    assert js["k"] == 4 and js["candidates"] == 48 and list(js["results"]) == list(MEASURES)
    for m, hits in js["results"].items():
        assert len(hits) == 4
        assert js["melanoma_in_top_k"][m] == sum(h["melanoma"] == 1 for h in hits)
        assert set(hits[0]["components"]) == {"euclidean", "cosine", "style", "dice"}
        assert all(set(h["meta"]) <= {"age_approx", "sex"} for h in hits)
    assert any("sex" in h["meta"] for hits in js["results"].values() for h in hits)
    assert "query_mask" not in js and all("path" not in h for hits in js["results"].values() for h in hits)
    ex = js["results"]["style"][0]["explain"]          # per-hit explanation (docs/style.md)
    assert sum(e["share"] for e in ex["style"]["layers"]) == pytest.approx(1.0)
    assert ex["style"]["ls"] == pytest.approx(js["results"]["style"][0]["raw"]["ls"], rel=1e-4)
    assert ex["mask"]["dice"] == pytest.approx(js["results"]["style"][0]["components"]["dice"])
    assert ex["overlap_png"].startswith("data:image/png;base64,")


def test_filters_restrict_candidates(client):
    with open(QUERY, "rb") as fh:
        js = client.post("/api/search", files={"file": ("q.jpg", fh)},
                         data={"k": "0", "diagnosis": "melanoma", "sex": "male", "measures": "style,dice"}).json()
    with open(SAMPLE) as f:
        expected = sum(r["diagnosis"] == "melanoma" and r["sex"] == "male" for r in csv.DictReader(f))
    assert js["candidates"] == expected and set(js["results"]) == {"style", "dice"}
    assert all(h["diagnosis"] == "melanoma" for h in js["results"]["style"])
    with open(QUERY, "rb") as fh:
        js = client.post("/api/search", files={"file": ("q.jpg", fh)}, data={"age_min": "40", "age_max": "50"}).json()
    with open(SAMPLE) as f:
        ages = [float(r["age_approx"]) for r in csv.DictReader(f) if r["age_approx"]]
    assert js["candidates"] == sum(40 <= a <= 50 for a in ages)


@pytest.mark.parametrize("payload, status, reason", [
    (b"", 415, "0 bytes"),
    (b"<html><body>hi</body></html>", 415, "not a recognised image"),
    (b"\xff\xd8\xff\xe0" + b"\x00" * 50, 415, "not a usable image"),
    (b"x" * 300_001, 413, "larger than"),
])
def test_bad_uploads_are_clear_4xx(client, payload, status, reason):
    r = client.post("/api/search", files={"file": ("bad.png", payload, "image/png")})
    assert r.status_code == status and reason in r.json()["detail"]
    assert "Traceback" not in r.text


def test_bad_parameters(client):
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 150, 120)).save(buf, format="PNG")
    r = client.post("/api/search", files={"file": ("a.png", buf.getvalue())}, data={"measures": "manhattan"})
    assert r.status_code == 422 and "unknown measure" in r.json()["detail"]
    r = client.post("/api/search", files={"file": ("a.png", buf.getvalue())}, data={"k": "999"})
    assert r.status_code == 422


def test_images_only_by_indexed_id(client):
    r = client.get("/api/images/ISIC_0000000")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 192
    full = client.get("/api/images/ISIC_0000000", params={"size": "full"})
    assert max(Image.open(io.BytesIO(full.content)).size) == 256
    for attack in ("../../../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "/etc/passwd", "images/ISIC_0000000.jpg",
                   "%2e%2e/labels.csv"):
        assert client.get(f"/api/images/{attack}").status_code == 404, attack
    assert client.get("/api/masks/ISIC_0000000").headers["content-type"] == "image/png"


def test_openapi_docs(client):
    spec = client.get("/openapi.json").json()
    assert {"/api/search", "/api/index", "/api/images/{image_id}"} <= set(spec["paths"])


def test_rating_api_round_trip(client, index_dir):
    task = client.post("/api/ratings/session").json()
    assert task["items"] and all(it["image"].startswith(f"/api/ratings/{task['session']}/images/")
                                 for it in task["items"])
    assert all(client.get(it["image"]).status_code == 200 for it in task["items"])
    marks = [{"item": it["item"], "similar": i % 2 == 0} for i, it in enumerate(task["items"])]
    r = client.post("/api/ratings", json={"session": task["session"], "query_id": task["query_id"],
                                          "ratings": marks, "rater": "t"})
    assert r.json() == {"stored": len(marks)}
    bad = client.post("/api/ratings", json={"session": task["session"], "query_id": task["query_id"],
                                            "ratings": [{"item": "99", "similar": 1}]})
    assert bad.status_code == 422
    rows = list(csv.DictReader(io.StringIO(client.get("/api/ratings.csv").text)))
    assert len(rows) == len(marks) and (index_dir / "ratings.sqlite").is_file()
    key = list(csv.DictReader(io.StringIO(client.get("/api/ratings-key.csv").text)))
    assert {r["measure"] for r in key} == set(MEASURES)


# ------------------------------------------------------------------ real browser
@pytest.fixture(scope="module")
def live_server(index_dir, chromium):
    with running_server(create_app(index_dir, WebConfig(auth="off"))) as url:
        yield url


@pytest.fixture(scope="module")
def browser(chromium):
    return chromium


@pytest.mark.slow
def test_browser_search_overlay_filter_and_rate(browser, live_server):
    page = browser.new_page()
    page.goto(live_server + "/")
    # the page's CSP forbids eval, so the waits use selectors, not JavaScript strings
    page.locator("#diagnosis option").nth(1).wait_for(state="attached")
    page.set_input_files("#file", str(QUERY))
    page.locator("#results .col").nth(9).wait_for()
    cols = page.locator("#results .col")
    for i in range(10):
        assert cols.nth(i).locator(".card").count() == 5
    assert page.locator(".mel-flag").count() == 10
    # overlay toggle shows the mask images
    overlay = page.locator(".thumb img.ov").first
    assert not overlay.is_visible()
    page.check("#overlay")
    assert overlay.is_visible()
    # each card explains its match: a per-layer style bar and the masks' overlap drawn over the thumbnail
    assert page.locator(".card .bar").count() == 50
    assert page.locator(".card .bar span").count() >= 50
    assert overlay.get_attribute("src").startswith("data:image/png;base64,")
    assert page.locator(".card .why").first.inner_text().startswith("style: most from stage")
    # filter: melanoma only -> every result is a melanoma
    page.select_option("#diagnosis", "melanoma")
    page.click("#go")
    page.locator("#status", has_text="18 candidates").wait_for()
    dx = page.locator("#results .dx").all_inner_texts()
    assert len(dx) == 50 and all(t.startswith("melanoma") for t in dx)
    # rate one query
    page.goto(live_server + "/rate")
    page.wait_for_selector("#items .item")
    page.locator("#items .item input").first.check()
    page.click("#save")
    page.locator("#status", has_text="saved").wait_for()
    rows = list(csv.DictReader(io.StringIO(page.request.get(live_server + "/api/ratings.csv").text())))
    assert any(r["similar"] == "1" for r in rows)
    page.close()


@pytest.mark.slow
def test_serve_command_binds_loopback(index_dir):
    import subprocess
    import sys

    import httpx
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "dermsearch.cli.main", "serve", str(index_dir), "--port",
                             str(port)], stderr=subprocess.PIPE, text=True)
    try:
        # no token yet: serve creates one for an admin and prints its sign-in link, once
        lines = []
        while not any("#token=" in line for line in lines):
            line = proc.stderr.readline()
            assert line, "".join(lines)
            lines.append(line)
        token = next(line for line in lines if "#token=" in line).split("#token=")[1].strip()
        assert f"http://127.0.0.1:{port}/login#token=" in "".join(lines)
        for _ in range(240):
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/index", timeout=1)
                break
            except httpx.HTTPError:
                assert proc.poll() is None
                time.sleep(0.25)
        assert r.status_code == 401                                   # fails closed by default
        r = httpx.get(f"http://127.0.0.1:{port}/api/index", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200 and r.json()["images"] == 48
        assert "<title>dermsearch</title>" in httpx.get(f"http://127.0.0.1:{port}/").text
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
def test_browser_consensus_compare_export_and_empty_filters(browser, live_server, tmp_path):
    page = browser.new_page()
    page.goto(live_server + "/")
    page.locator("#diagnosis option").nth(1).wait_for(state="attached")
    page.set_input_files("#file", str(QUERY))
    page.locator("#results .col").nth(9).wait_for()
    # plain-language measure names with a line each, and the consensus over the ten measures
    assert page.locator("#results .col h3").first.inner_text().startswith("Overall appearance")
    assert page.locator("#results .col .about").first.inner_text()
    consensus = page.locator("#consensus").inner_text()
    flags = page.locator(".mel-flag.yes").count()
    assert (f"of {flags} of 10 measures" in consensus) if flags else consensus.startswith("No melanoma")
    # the query's own mask, over the query
    assert page.locator("#qmask").get_attribute("src").startswith("data:image/png;base64,")
    # a match, side by side with the query, full size, both masks
    page.locator("#results .card .thumb").first.click()
    page.locator("#compare").wait_for()
    assert "size=full" in page.locator("#cmp-m").get_attribute("src")
    assert page.locator("#cmp-mm").get_attribute("src").startswith("/api/masks?id=")
    assert page.locator("#cmp-q").get_attribute("src").startswith("blob:")
    # export: the JSON and the contact sheet of this search
    with page.expect_download() as d:
        page.click("#dljson")
    js = json.loads(open(d.value.path()).read())
    assert set(js["results"]) == set(MEASURES)
    with page.expect_download() as d:
        page.click("#dlsheet")
    sheet = open(d.value.path()).read()
    assert sheet.startswith("<!doctype html>") and "Colour and texture" in sheet and "<script" not in sheet
    # filters that leave nothing: a clear message, no empty columns
    page.fill("#age_min", "150")
    page.click("#go")
    page.locator("#status", has_text="No indexed image matches these filters").wait_for()
    assert page.locator("#results .col").count() == 0
    page.close()


def test_search_export_as_contact_sheet(client):
    with open(QUERY, "rb") as fh:
        r = client.post("/api/search", files={"file": ("q.jpg", fh)}, data={"k": "2", "format": "html"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "attachment" in r.headers["content-disposition"] and r.text.count("class='bar'") == 20
