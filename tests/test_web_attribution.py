"""Licence and attribution on each match of the web page, and hiding the query patient's other images
(issue #43 items 3 and 4): the JSON through TestClient, the page in Chromium, a hand-built archive."""

from __future__ import annotations

import io

import pytest
from fastapi.testclient import TestClient

from dermsearch.search import Searcher
from dermsearch.web.app import WebConfig, create_app

from .conftest import indexed_archive, lesion_image, running_server

SCRIPT = "<script>alert(1)</script> Clinic"
IMG = '"><img src=x onerror=alert(2)> & co'
# patient P1: three images over two lesions; P2: two; the rest name no patient
PATIENTS = ["P1", "P1", "P1", "P2", "P2", "", "", "", "", ""]
LESIONS = ["L1", "L1", "L2", "L3", "L4", "L5", "L6", "L7", "L8", "L9"]


@pytest.fixture(scope="module")
def archive(tiny_extractor, tmp_path_factory):
    root = tmp_path_factory.mktemp("attr")
    rows = [{"image_id": f"im{i}", "diagnosis": "melanoma" if i % 3 == 0 else "nevus", "lesion_id": LESIONS[i],
             "patient_id": PATIENTS[i], "license": ["CC-BY", "CC-0", "CC-BY-NC"][i % 3],
             "attribution": [SCRIPT, IMG, ""][i % 3]} for i in range(10)]
    indexed_archive(root, rows, tiny_extractor)
    return root, tiny_extractor


def _app(archive, **cfg):
    root, extractor = archive
    return create_app(root / "ix", WebConfig(auth="off", **cfg), searcher=Searcher(root / "ix", extractor=extractor))


@pytest.fixture(scope="module")
def client(archive):
    return TestClient(_app(archive), base_url="http://localhost")


def _png(seed=40) -> bytes:
    buf = io.BytesIO()
    lesion_image(seed).save(buf, format="PNG")
    return buf.getvalue()


def _ids(js) -> set[str]:
    return {h["id"] for hits in js["results"].values() for h in hits}


def test_licence_and_attribution_on_each_match_in_the_json(client):
    assert client.get("/api/index").json()["has_patients"] is True
    js = client.post("/api/search", files={"file": ("q.png", _png())}, data={"k": "0"}).json()
    assert js["candidates"] == 10
    for hits in js["results"].values():
        assert len(hits) == 10
        for h in hits:
            i = int(h["id"][2:])
            assert h["license"] == ["CC-BY", "CC-0", "CC-BY-NC"][i % 3]
            assert h["attribution"] == [SCRIPT, IMG, None][i % 3]          # verbatim data; the page escapes
            assert "license" not in h["meta"] and "attribution" not in h["meta"]
    assert js["same_patient"]["query_patient"] is False and js["same_patient"]["hidden"] == 0
    assert "uploaded image has no patient" in js["same_patient"]["note"]


def test_search_by_id_hides_the_query_patients_other_images(client):
    js = client.post("/api/search", data={"image_id": "im0", "k": "0"}).json()
    assert js["candidates"] == 7 and js["same_patient"] == {
        "query_patient": True, "hidden": 2, "note": "2 other image(s) of the query's patient are hidden"}
    assert _ids(js) == {f"im{i}" for i in range(3, 10)}      # not itself, not im1 (same lesion), not im2 (L2)
    shown = client.post("/api/search", data={"image_id": "im0", "k": "0", "hide_same_patient": "false"}).json()
    assert shown["candidates"] == 9 and shown["same_patient"]["hidden"] == 0
    assert _ids(shown) == {f"im{i}" for i in range(1, 10)}   # the query itself is never its own match
    assert "not hidden" in shown["same_patient"]["note"]
    p2 = client.post("/api/search", data={"image_id": "im4", "k": "0"}).json()
    assert _ids(p2) == {f"im{i}" for i in range(10)} - {"im3", "im4"}
    # a query image without a patient id: nothing else is hidden, and the answer says why
    none = client.post("/api/search", data={"image_id": "im7", "k": "0"}).json()
    assert none["candidates"] == 9 and none["same_patient"]["query_patient"] is False
    assert "no patient id" in none["same_patient"]["note"]
    # filters still apply on top
    mel = client.post("/api/search", data={"image_id": "im0", "k": "0", "diagnosis": "melanoma"}).json()
    assert _ids(mel) == {"im3", "im6", "im9"}


def test_search_by_id_refusals_and_contact_sheet(client):
    assert client.post("/api/search", data={"image_id": "nope"}).status_code == 404
    both = client.post("/api/search", files={"file": ("q.png", _png())}, data={"image_id": "im0"})
    assert both.status_code == 422 and "either" in both.json()["detail"]
    assert client.post("/api/search", data={"k": "3"}).status_code == 422
    sheet = client.post("/api/search", data={"image_id": "im0", "k": "0", "format": "html"})
    assert sheet.status_code == 200 and "attachment" in sheet.headers["content-disposition"]
    page = sheet.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt; Clinic" in page and "<script" not in page
    assert "&lt;img src=x onerror=alert(2)&gt; &amp; co" in page and "<img src=x" not in page
    assert "im1'" not in page and "im2'" not in page and "licence: CC-0" in page


def test_rating_task_credits_its_images_without_unblinding_and_leaves_out_the_patient(archive):
    app = _app(archive, rating_query_ids=frozenset({"im0"}))
    c = TestClient(app, base_url="http://localhost")
    task = c.post("/api/ratings/session").json()
    assert task["query_id"] == "im0" and all(set(it) == {"item", "image"} for it in task["items"])
    cands = {app.state.server.ratings.candidate(task["session"], it["item"], None) for it in task["items"]}
    assert cands and not cands & {"im0", "im1", "im2"}         # the query's patient: none of its images
    rights = {i: (["CC-BY", "CC-0", "CC-BY-NC"][i % 3], [SCRIPT, IMG, None][i % 3]) for i in range(10)}
    expected = sorted({rights[int(i[2:])] for i in cands | {"im0"}}, key=lambda r: (r[0], r[1] or ""))
    assert [(cr["license"], cr["attribution"]) for cr in task["credits"]] == expected


@pytest.mark.slow
def test_attribution_renders_escaped_and_patient_switch_in_chromium(chromium, archive, tmp_path):
    query = tmp_path / "q.png"
    query.write_bytes(_png())
    dialogs = []
    page = chromium.new_page()
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    with running_server(_app(archive, rating_query_ids=frozenset({"im0"}))) as base:   # im0: credits SCRIPT
        page.goto(base + "/")
        page.locator("#patientbox:not([hidden])").wait_for()        # the index has patients: switch shown, on
        assert page.is_checked("#hidepatient")
        page.fill("#k", "10")                                               # every candidate shown
        page.set_input_files("#file", str(query))
        page.locator("#results .col").nth(9).wait_for()
        page.locator("#status", has_text="uploaded image has no patient").wait_for()
        page.wait_for_timeout(300)
        # the CSP forbids eval, so the checks use selectors, not JavaScript strings
        assert page.locator("[onerror]").count() == 0 and page.locator("script:not([src])").count() == 0
        attrs = page.locator("#results .card .attr").all_inner_texts()
        assert "\u00a9 " + SCRIPT in attrs and "\u00a9 " + IMG in attrs        # shown as text, verbatim
        assert len(attrs) == 10 * 7                                          # 7 of the 10 images name one
        assert page.locator("#results .card .lic", has_text="licence: CC-BY-NC").count() == 10 * 3
        # search with a match of patient P1: the patient's other images are gone from every measure
        page.locator("#results .card", has=page.locator(".hid", has_text="im0")).first \
            .locator("button.more").click()
        page.locator("#status", has_text="2 other image(s) of the query's patient are hidden").wait_for()
        page.locator("#results .col").nth(9).wait_for()
        ids = set(page.locator("#results .hid").all_inner_texts())
        assert ids and not ids & {"im0", "im1", "im2"}
        page.uncheck("#hidepatient")                                         # the switch off: they come back
        page.locator("#status", has_text="they are not hidden").wait_for()
        ids = set(page.locator("#results .hid").all_inner_texts())
        assert {"im1", "im2"} <= ids and "im0" not in ids
        assert page.locator("[onerror]").count() == 0 and dialogs == []
        # the rating page credits its images as text, tied to no item
        page.goto(base + "/rate")
        page.locator("#credits:not([hidden])").wait_for()
        page.wait_for_timeout(300)
        assert SCRIPT in page.inner_text("#credits") and page.locator("#items .item .lic").count() == 0
        assert page.locator("[onerror]").count() == 0 and page.locator("script:not([src])").count() == 0
        assert dialogs == []
    page.close()
