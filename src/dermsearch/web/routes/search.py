"""Index facts and search, by upload or by an indexed image's id. Admission (rate, queue) happened in
the gate, from the headers; decoding, extraction and ranking run in the bounded pool, never on the
event loop. A search by id leaves out the query image itself and, unless asked not to, every other
image of the query's patient (its other lesions too); an upload has no patient, and the answer says so."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import anyio.to_thread
from fastapi import APIRouter, Depends, File, Form, HTTPException, UploadFile
from fastapi.responses import HTMLResponse

from ...config import SearchConfig
from ...errors import DermsearchError
from ...extract import ImageError, load_image
from ...search import MEASURES, Filters
from ...search.explain import mask_png
from ...search.sheet import contact_sheet_html
from ..state import Server, row_of, server, unreadable

QUERY_MASK = (217, 45, 32, 120)     # the query's mask overlay: red
# shown elsewhere (licence and attribution have their own fields) or never (paths)
_HIDDEN_META = {"image_id", "image_path", "mask_path", "diagnosis", "lesion_id", "melanoma", "license",
                "attribution"}
router = APIRouter()


@router.get("/api/index", summary="Facts about the index (the version served: every request uses the newest)")
def index_facts(srv: Server = Depends(server)) -> dict:
    with srv.live.current() as st:
        return st.facts


@dataclass(frozen=True)
class SearchParams:
    k: int
    wanted: list[str] | None
    filters: Filters
    with_mask: bool
    sheet: bool


def search_params(k: int = Form(SearchConfig.k, description="results per measure, 1..max_k; 0: all, capped at max_k"),
                  measures: list[str] = Form([], description="repeat the field once per measure, or "
                                                             "comma-separate them; default all"),
                  diagnosis: list[str] = Form([], description="repeat the field once per value (any of them)"),
                  site: list[str] = Form([]), sex: list[str] = Form([]),
                  age_min: float | None = Form(None), age_max: float | None = Form(None),
                  query_mask: str = Form("none", description="none, or png: the query's mask as a PNG data URI"),
                  format: str = Form("json", description="json, or html: the contact sheet as a download"),
                  srv: Server = Depends(server)) -> SearchParams:
    config, live = srv.config, srv.live
    if not 0 <= k <= config.max_k:
        raise HTTPException(422, f"k must be between 0 and {config.max_k}")
    if query_mask not in ("none", "png"):
        raise HTTPException(422, "query_mask must be none or png")
    if format not in ("json", "html"):
        raise HTTPException(422, "format must be json or html")
    wanted = [m.strip() for v in measures for m in v.split(",") if m.strip()] or None
    if wanted:
        unknown = [m for m in wanted if m not in MEASURES]
        if unknown:
            raise HTTPException(422, f"unknown measure(s) {unknown}; valid: {', '.join(MEASURES)}")
    equals = {}
    for col, values in (("diagnosis", diagnosis), (live.site_col, site), ("sex", sex)):
        vals = tuple(v for v in values if v != "")        # each field one value, verbatim: commas are data
        if vals:
            equals[col] = vals
    ranges = {live.age_col: (age_min, age_max)} if age_min is not None or age_max is not None else {}
    return SearchParams(k, wanted, Filters(equals, ranges), query_mask == "png", format == "html")


@router.post("/api/search", summary="Search with an uploaded image, or with an indexed image by its id",
             responses={404: {"description": "no such indexed image"}, 413: {"description": "upload too large"},
                        415: {"description": "not an allowed image"}, 429: {"description": "busy: retry later"}})
async def search(file: UploadFile | None = File(None, description="the query image (JPEG, PNG, TIFF, BMP or "
                                                                   "WebP); or give image_id"),
                 image_id: str = Form("", description="search with this indexed image instead of an upload"),
                 hide_same_patient: bool = Form(True, description="with image_id: leave out every image of the "
                                                "query's patient (its other lesions too), when it has one"),
                 params: SearchParams = Depends(search_params), srv: Server = Depends(server)):
    if (file is None) == (image_id == ""):
        raise HTTPException(422, "give either an uploaded file or an image_id, not both")
    if file is not None:
        data = await file.read(srv.config.max_upload_bytes + 1)
        if len(data) > srv.config.max_upload_bytes:
            raise HTTPException(413, f"upload larger than {srv.config.max_upload_bytes} bytes")
        out = await anyio.to_thread.run_sync(_upload_work, srv, data, params, limiter=srv.limiter)
    else:
        out = await anyio.to_thread.run_sync(_id_work, srv, image_id, hide_same_patient, params,
                                             limiter=srv.limiter)
    if params.sheet:
        return HTMLResponse(out, headers={"Content-Disposition": 'attachment; filename="dermsearch-search.html"'})
    return out


def _upload_work(srv: Server, data: bytes, params: SearchParams):
    image = load_image(data, max_pixels=srv.config.max_pixels, dicom=False)   # an ImageError is a 415
    with srv.live.current() as st:
        query = st.searcher.encode(image, label="upload")
        note = {"query_patient": False, "hidden": 0, "note": "an uploaded image has no patient: no match is "
                "hidden for being the same patient's"}
        return _search_in(srv, st, query, image, (), params, note)


def _id_work(srv: Server, image_id: str, hide: bool, params: SearchParams):
    with srv.live.current() as st:
        pos = row_of(st, image_id)
        try:
            image = load_image(st.snap.paths[pos]) if params.sheet else None
        except ImageError as e:
            raise unreadable(image_id, e) from None
        patient = str(st.meta[pos].get("patient_id") or "")
        same = [i for i in st.patients.get(patient, ()) if i != image_id] if patient else []
        if not patient:
            note = "the query image has no patient id: no match is hidden for being the same patient's"
        elif hide:
            note = f"{len(same)} other image(s) of the query's patient are hidden"
        else:
            note = f"the query's patient has {len(same)} other image(s); they are not hidden"
        exclude = [image_id, *same] if hide else [image_id]
        info = {"query_patient": bool(patient), "hidden": len(same) if hide else 0, "note": note}
        return _search_in(srv, st, st.searcher.query_for_id(image_id), image, exclude, params, info)


def _hit_json(hit, meta: dict) -> dict:
    d = hit.to_json()
    d.pop("path", None)            # ids only: server paths never reach a client
    d["melanoma"] = hit.melanoma
    d["lesion_id"] = hit.lesion_id
    d["license"], d["attribution"] = hit.license, hit.attribution     # None when the source named none
    d["meta"] = {k: v for k, v in meta.items() if k not in _HIDDEN_META and v not in ("", None)}
    return d


def _search_in(srv: Server, st, query, image, exclude, params: SearchParams, same_patient: dict):
    searcher, meta, max_k = st.searcher, st.meta, srv.config.max_k
    try:
        result = searcher.search(query, k=params.k if params.k else max_k, measures=params.wanted,
                                 exclude_ids=exclude, filters=params.filters, explain=True)
    except DermsearchError:
        raise                  # the app's one handler: a 4xx with a one-line reason and no server path
    except ValueError as e:
        raise HTTPException(422, str(e)) from None
    if params.sheet:         # the contact sheet of this search, as the CLI's --html writes it
        overlays = {h.id: searcher.mask_overlay(query, h.id) for hits in result.results.values() for h in hits}
        return contact_sheet_html(result, image, overlays)
    out = result.to_json()
    out["k"] = params.k
    out["k_shown"] = params.k if params.k else max_k
    out["same_patient"] = same_patient
    out["results"] = {m: [_hit_json(h, meta[searcher.row(h.id)]) for h in hits] for m, hits in result.results.items()}
    overlays: dict[str, str | None] = {}
    for hits in out["results"].values():
        for h in hits:
            if "explain" in h and "mask" in h["explain"]:
                if h["id"] not in overlays:
                    png = searcher.mask_overlay(query, h["id"])
                    overlays[h["id"]] = None if png is None else \
                        "data:image/png;base64," + base64.b64encode(png).decode()
                h["explain"] = {**h["explain"], "overlap_png": overlays[h["id"]]}
    out["melanoma_in_top_k"] = {m: sum(1 for h in hits if h.melanoma == 1) for m, hits in result.results.items()}
    if params.with_mask and query.mask is not None:
        png = mask_png(query.mask, searcher.index.manifest["mask_size"], QUERY_MASK)
        out["query_mask_png"] = "data:image/png;base64," + base64.b64encode(png).decode()
    return out
