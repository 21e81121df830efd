"""ONNX export and the ONNX Runtime backend: parity with torch, indexing, caching, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dermsearch.cli.main import main
from dermsearch.extract import Extractor
from dermsearch.extract.onnx import export_onnx
from dermsearch.index import Index
from dermsearch.index.build import build_index
from dermsearch.runtime import Runtime
from dermsearch.search import Searcher

from .conftest import TINY, lesion_image

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("DERMSEARCH_CACHE", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def pair(tiny_extractor, cache):
    return tiny_extractor, Extractor(TINY, Runtime(backend="onnx"))


@pytest.mark.slow
def test_parity_with_torch(pair):
    torch_ex, onnx_ex = pair
    images = [lesion_image(i) for i in range(5)]
    a, b = torch_ex.extract(images), onnx_ex.extract(images)
    assert onnx_ex.fingerprint == torch_ex.fingerprint       # the backend does not change what the index means
    feature_diff = float(np.abs(a.features - b.features).max())
    style_diff = float(np.abs(a.styles - b.styles).max())
    # float32 rounding only (measured on the shipped ensemble: docs/performance.md)
    assert feature_diff <= 1e-4 * max(1.0, float(np.abs(a.features).max()))
    assert style_diff <= 1e-4 * max(1.0, float(np.abs(a.styles).max()))
    differing = int(np.unpackbits(a.masks ^ b.masks).sum())
    assert differing <= 0.001 * a.masks.size * 8                # logits within rounding of 0 may flip
    assert np.array_equal(a.mask_areas, b.mask_areas) or differing > 0


def test_export_is_cached_and_complete(pair, cache):
    _, onnx_ex = pair
    assert onnx_ex.ort.segmenter is not None      # exports on first use
    first = export_onnx(onnx_ex)
    assert first.parent == cache / "onnx"
    stamp = (first / "extractor.onnx").stat().st_mtime_ns
    assert export_onnx(onnx_ex) == first and (first / "extractor.onnx").stat().st_mtime_ns == stamp
    info = json.loads((first / "onnx.json").read_text())
    assert info["fingerprint"] == onnx_ex.fingerprint and info["outputs"] == ["feature", "style"]
    assert (first / "segmenter.onnx").is_file()
    assert not list(first.parent.glob("*.tmp-*"))


def test_index_with_onnx_then_search_with_torch(pair, tmp_path, image_folder):
    torch_ex, onnx_ex = pair
    report = build_index(image_folder, tmp_path / "ix", extractor=onnx_ex, runtime=Runtime(batch_size=3))
    assert report.added == 8 and not report.problems
    s = Searcher(tmp_path / "ix", extractor=torch_ex)
    for image_id in ("img02", "img05"):
        path = [p for i, p in zip(s.snapshot.ids, s.snapshot.paths) if i == image_id][0]
        res = s.search(path, k=1)       # the torch backend re-extracts the query
        for m in ("euclidean", "cosine", "style"):
            assert res.results[m][0].id == image_id


@pytest.mark.slow
def test_build_config_backend_and_cli_export(tiny_extractor, cache, tmp_path, image_folder, capsys):
    report = build_index(image_folder, tmp_path / "ix", TINY, Runtime(backend="onnx", batch_size=4))
    assert report.added == 8
    assert Index.open(tmp_path / "ix").fingerprint == tiny_extractor.fingerprint
    assert main(["export-onnx", str(tmp_path / "ix"), "--out", str(tmp_path / "exported")]) == 0
    assert (tmp_path / "exported" / "extractor.onnx").is_file()
    assert "exported model" in capsys.readouterr().out


def test_unknown_backend_is_clear():
    with pytest.raises(ValueError, match="backend must be one of"):
        Extractor(TINY, Runtime(backend="tensorrt"))


def test_cached_encoder_is_the_index_model_without_torch(pair, cache, tmp_path, image_folder):
    """A query is encoded from the export that indexing cached (same vectors as the extractor),
    and on an optimized index a whole search loads neither torch nor LanceDB."""
    import os
    import subprocess
    import sys

    from dermsearch.extract.encoder import cached_encoder

    _, onnx_ex = pair
    build_index(image_folder, tmp_path / "ix", extractor=onnx_ex, runtime=Runtime(batch_size=4))
    manifest = Index.open(tmp_path / "ix").manifest
    encoder = cached_encoder(manifest, "cpu")
    assert encoder is not None and encoder.fingerprint == manifest["fingerprint"]
    images = [lesion_image(i) for i in range(3)]
    a, b = onnx_ex.extract(images), encoder.extract(images)
    np.testing.assert_allclose(a.features, b.features, rtol=0, atol=1e-6)
    np.testing.assert_allclose(a.styles, b.styles, rtol=0, atol=1e-6)
    assert np.array_equal(a.masks, b.masks) and np.array_equal(a.mask_areas, b.mask_areas)
    assert cached_encoder(manifest, "cuda") is None                       # CUDA: the torch extractor
    assert cached_encoder({**manifest, "fingerprint": "0" * 16}, "cpu") is None   # no export of that model

    assert main(["optimize", str(tmp_path / "ix"), "--style-dims", "4", "--feature-dims", "4", "--mask-grid", "4",
                 "--candidates", "8"]) == 0
    query = str(image_folder / "img03.png")
    expected = Searcher(tmp_path / "ix", extractor=onnx_ex).search(query, k=3)
    code = ("import json, sys; from dermsearch.search import Searcher; "
            "from dermsearch.runtime import Runtime; "
            "r = Searcher(sys.argv[1], runtime=Runtime(device='cpu')).search(sys.argv[2], k=3); "
            "print(json.dumps({'ids': {m: [h.id for h in r.results[m]] for m in r.results}, "
            "'loaded': [m for m in ('torch', 'lancedb') if m in sys.modules]}))")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "ix"), query], capture_output=True, text=True,
                         env={**os.environ, "DERMSEARCH_CACHE": str(cache)})
    assert res.returncode == 0, res.stderr
    got = json.loads(res.stdout)
    assert got["loaded"] == []
    assert got["ids"] == {m: [h.id for h in hits] for m, hits in expected.results.items()}


def test_cached_encoder_refuses_other_preprocessing_and_unloadable_exports(pair, cache, tmp_path, image_folder):
    from dermsearch.extract.encoder import cached_encoder
    from dermsearch.extract.ort import export_directory

    _, onnx_ex = pair
    build_index(image_folder, tmp_path / "ix", extractor=onnx_ex, runtime=Runtime(batch_size=4))
    manifest = Index.open(tmp_path / "ix").manifest
    directory = export_directory(manifest["fingerprint"])
    info_path = directory / "onnx.json"
    info = json.loads(info_path.read_text())
    model = (directory / "extractor.onnx").read_bytes()
    try:
        info_path.write_text(json.dumps({**info, "preprocess_version": -1}))
        assert cached_encoder(manifest, "cpu") is None         # resized/normalised otherwise: torch decides
        info_path.write_text(json.dumps(info))
        (directory / "extractor.onnx").write_bytes(b"not a model")
        assert cached_encoder(manifest, "cpu") is None         # unloadable: falls back, does not crash
        s = Searcher(tmp_path / "ix", runtime=Runtime(device="cpu"))
        assert s.search(str(image_folder / "img01.png"), k=1).results["euclidean"][0].id == "img01"
    finally:
        info_path.write_text(json.dumps(info))
        (directory / "extractor.onnx").write_bytes(model)


def _vignetted(source, out, size=None):
    """``source`` (resized to ``size``, when given) with a contact dermatoscope's black corners
    (outside a centred disc), saved as ``out``."""
    from PIL import Image

    img = Image.open(source).convert("RGB")
    a = np.asarray(img.resize(size, Image.Resampling.BILINEAR) if size else img).copy()
    yy, xx = np.mgrid[:a.shape[0], :a.shape[1]]
    a[(yy - a.shape[0] / 2) ** 2 + (xx - a.shape[1] / 2) ** 2 > (0.45 * a.shape[0]) ** 2] = 0
    Image.fromarray(a).save(out)
    return out


@pytest.mark.slow
def test_exported_files_run_without_dermsearch_as_documented(cache, tmp_path, image_folder, capsys):
    """docs/usage.md's ONNX contract, run as written (numpy, scipy, Pillow and onnxruntime only; no
    dermsearch module imported) on an export of a model with every preprocessing step the contract
    names (Shades of Gray, a learned segmenter, lesion-pooled Grams: the `masks` input, field-of-view
    pooling: the `fields` input, on a query with a black vignette, and a cap on the long side), gives the
    feature and style vectors `dermsearch search` computes for the same image."""
    import dataclasses
    import re
    import subprocess
    import sys

    from .conftest import REPO, TORCH

    config = dataclasses.replace(TINY, weights="imagenet", image_size=128, colour="shades-of-gray", gram_pool="lesion",
                                 gram_margin=0.05, gram_norm="l2", segmenter="default", fov=True, max_side=80)
    build_index(image_folder, tmp_path / "ix", config, TORCH)
    assert main(["export-onnx", str(tmp_path / "ix"), "--out", str(tmp_path / "onnx")]) == 0
    said = capsys.readouterr().out
    assert "pixels [B,3,S,S]" in said and "masks [B,1,S,S]" in said and "segmenter.onnx" in said
    assert "fields [B,1,S,S]" in said

    doc = (REPO / "docs" / "usage.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "def encode(" in b]
    call = 'feature, style = encode("onnx", "examples/queries/ISIC_0000022.jpg")'
    assert call in block
    code = block[:block.index(call)] + (
        "\nimport sys\nassert not [m for m in sys.modules if m.startswith('dermsearch')]\n"
        "f, s = encode(sys.argv[1], sys.argv[2])\nnp.save(sys.argv[3], f)\nnp.save(sys.argv[4], s)\n")
    # the fields input matters (a black vignette), and so does the cap: a 150x111 query is reduced to 80x59
    query = _vignetted(image_folder / "img05.png", tmp_path / "vignetted.png", size=(150, 111))
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "onnx"), str(query), str(tmp_path / "f.npy"),
                          str(tmp_path / "s.npy")], cwd=tmp_path, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "'masks'" not in res.stderr and "'fields'" not in res.stderr
    expected = Searcher(tmp_path / "ix", runtime=TORCH).encode(str(query))      # what `dermsearch search` ranks by
    feature, style = np.load(tmp_path / "f.npy"), np.load(tmp_path / "s.npy")
    assert feature.shape == expected.feature.shape and style.shape == expected.style.shape
    np.testing.assert_allclose(feature, expected.feature, rtol=0, atol=1e-4 * max(1.0, np.abs(feature).max()))
    np.testing.assert_allclose(style, expected.style, rtol=0, atol=1e-4 * max(1.0, np.abs(style).max()))

    # ...and ranked against the index's stored vectors as the README defines the measures, they give
    # the scores and the order `dermsearch search` prints (ties aside)
    capsys.readouterr()
    assert main(["search", str(tmp_path / "ix"), str(query), "--json", "-k", "0", "--no-explain",
                 "--measure", "euclidean", "cosine", "style"]) == 0
    said = json.loads(capsys.readouterr().out)["results"]
    stored = Index.open(tmp_path / "ix").snapshot()
    f, rows = feature.astype(np.float64), stored.features.astype(np.float64)
    distance = np.linalg.norm(rows - f, axis=1)
    cosine = rows @ f / (np.linalg.norm(rows, axis=1) * np.linalg.norm(f))
    loss = ((stored.styles.astype(np.float64) - style.astype(np.float64)) ** 2).sum(1)
    mine = {"euclidean": 1 - distance / distance.max(), "cosine": (cosine + 1) / 2, "style": 1 - loss / loss.max()}
    position = {str(i): n for n, i in enumerate(stored.ids)}
    for measure, scores in mine.items():
        hits = said[measure]
        assert len(hits) == len(stored.ids)
        cli = np.array([h["score"] for h in hits])
        ours = np.array([scores[position[h["id"]]] for h in hits])
        np.testing.assert_allclose(ours, cli, rtol=0, atol=1e-3, err_msg=measure)
        order = [str(stored.ids[n]) for n in np.argsort(-scores, kind="stable")]
        gap = np.abs(np.diff(np.sort(scores)[::-1])) > 1e-3            # gaps no rounding can close
        clear = np.flatnonzero(np.r_[True, gap] & np.r_[gap, True])     # ranks apart from both neighbours
        assert len(clear) >= len(order) // 2, measure
        assert [order[n] for n in clear] == [hits[n]["id"] for n in clear], measure
