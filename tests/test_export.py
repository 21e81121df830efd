"""`dermsearch export`: one Parquet file that pandas, polars and Hugging Face datasets read as is;
and the licence and attribution each image carries into search results and the contact sheet."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from dermsearch.cli.main import main
from dermsearch.index.build import build_index
from dermsearch.search import Searcher

from .readers_fixtures import isic_archive


@pytest.fixture(scope="module")
def isic_index(tiny_extractor, tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    build_index(isic_archive(root / "isic"), root / "ix", extractor=tiny_extractor)
    return root, Searcher(root / "ix", extractor=tiny_extractor)


def test_export_parquet_round_trip(isic_index, tmp_path, capsys):
    root, searcher = isic_index
    out = tmp_path / "out.parquet"
    assert main(["export", str(root / "ix"), str(out), "--json"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["rows"] == 8 and written["style_dim"] == 0
    table = pq.read_table(out)
    s = searcher.snapshot
    assert table.column("id").to_pylist() == s.ids.tolist()
    assert np.allclose(np.array(table.column("feature").to_pylist(), dtype=np.float32), s.features)
    assert table.column("license").to_pylist()[:4] == ["CC-BY", "CC-BY", "CC-BY", "CC-0"]
    assert table.column("patient_id").to_pylist()[0] == "IP_P1"
    assert json.loads(table.column("meta")[0].as_py())["diagnosis_1"] == "Malignant"
    assert table.schema.metadata[b"feature_dim"] == str(s.features.shape[1]).encode()
    assert "style" not in table.column_names and not list(tmp_path.glob(".*tmp*"))

    styled = tmp_path / "styled.parquet"
    assert main(["export", str(root / "ix"), str(styled), "--style"]) == 0
    st = pq.read_table(styled, columns=["style"])
    assert np.allclose(np.array(st.column("style").to_pylist(), dtype=np.float32), s.styles)


def test_export_reads_one_version_held_throughout(isic_index, tmp_path, monkeypatch):
    """Rows removed (a new version committed) while the file is written change nothing: every row
    of the version the export pinned is written, that version is reported, and a reader lease
    holds it meanwhile (so compaction keeps it)."""
    import shutil

    from dermsearch.index import Index, export
    from dermsearch.index.leases import held_versions

    root, searcher = isic_index
    shutil.copytree(root / "ix", tmp_path / "ix", ignore=shutil.ignore_patterns("readers"))   # no lease but ours
    index = Index.open(tmp_path / "ix")
    pinned = index.latest_version()
    ids = index.snapshot(vectors=False).ids.tolist()
    seen = []
    real_rows = export._rows

    def rows_then_remove(batch, style, schema):
        if not seen:
            seen.append(held_versions(tmp_path / "ix"))
            assert index.remove(ids[:3])[0] == ids[:3]            # a new version, 5 rows, mid-export
        return real_rows(batch, style, schema)

    monkeypatch.setattr(export, "_rows", rows_then_remove)
    written = export.export_parquet(index, tmp_path / "out.parquet", batch_rows=2)
    assert seen == [[pinned]]
    assert index.latest_version() > pinned and len(index) == len(ids) - 3
    assert written["version"] == pinned and written["rows"] == len(ids)
    assert pq.read_table(tmp_path / "out.parquet").column("id").to_pylist() == ids
    assert held_versions(tmp_path / "ix") == []                     # the lease ends with the export


def test_pandas_polars_and_datasets_read_it_as_is(isic_index, tmp_path):
    root, searcher = isic_index
    out = tmp_path / "out.parquet"
    assert main(["export", str(root / "ix"), str(out)]) == 0
    dim = searcher.snapshot.features.shape[1]
    pd = pytest.importorskip("pandas")
    df = pd.read_parquet(out)
    assert len(df) == 8 and len(df["feature"][0]) == dim and df["license"].value_counts()["CC-BY-NC"] == 3
    pl = pytest.importorskip("polars")
    frame = pl.read_parquet(out)
    assert frame.height == 8 and frame["feature"].list.len().to_list() == [dim] * 8
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_parquet(str(out), cache_dir=str(tmp_path / "hf"))
    assert ds.num_rows == 8 and len(ds[0]["feature"]) == dim and ds[5]["attribution"] == "Clinic <B> & co"


def test_export_refuses_style_an_index_lacks(tiny_extractor, tmp_path, capsys):
    from dermsearch.extract import Extractor
    from dermsearch.extract.config import ExtractorConfig

    from .conftest import TINY, TORCH

    plain = Extractor(ExtractorConfig(**{**TINY.to_dict(), "style": False}), TORCH)
    build_index(isic_archive(tmp_path / "isic"), tmp_path / "ix", extractor=plain)
    assert main(["export", str(tmp_path / "ix"), str(tmp_path / "o.parquet"), "--style"]) == 2
    assert "stores no style vectors" in capsys.readouterr().err and not (tmp_path / "o.parquet").exists()


def test_licence_and_attribution_on_hits_and_the_contact_sheet(isic_index, tmp_path):
    from dermsearch.search.sheet import contact_sheet_html

    root, searcher = isic_index
    query = root / "isic" / "ISIC_9900000.jpg"
    result = searcher.search(query, k=8)
    hits = {h.id: h for hits in result.results.values() for h in hits}
    assert hits["ISIC_9900005"].license == "CC-BY-NC" and hits["ISIC_9900005"].attribution == "Clinic <B> & co"
    js = hits["ISIC_9900005"].to_json()
    assert js["license"] == "CC-BY-NC" and js["attribution"] == "Clinic <B> & co"
    page = contact_sheet_html(result, query)
    assert "licence: CC-BY-NC" in page and "&copy; Clinic &lt;B&gt; &amp; co" in page
    assert "Clinic <B>" not in page
