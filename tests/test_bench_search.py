"""benchmarks/bench_search.py runs on the current API (it swaps the searcher's engine to time each
kernel and certified mode) and its own correctness checks hold. Nothing here is timed."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from .conftest import indexed_archive

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_search  # noqa: E402


@pytest.mark.slow
def test_bench_search_runs_and_its_answers_agree(tmp_path, tiny_extractor):
    rows = [{"image_id": f"x{i:02d}", "diagnosis": "melanoma" if i % 3 == 0 else "nevus"} for i in range(24)]
    ix = indexed_archive(tmp_path, rows, tiny_extractor)
    out = bench_search.run(ix, n_queries=4, batch=6)
    assert out["images"] == 24
    assert out["batch_same_ranks_as_single"] is True
    assert out["max_abs_score_diff_vs_loop"] < 1e-4   # the engine (float32) against the float64 per-image loop
    assert out["certified"]["queries_with_identical_top5_all_measures"] == "4/4"
    assert set(out["by_kernel"]) == set(bench_search.KERNELS)
    assert set(out["query_ms_per_measure"]) == set(bench_search.MEASURES)
