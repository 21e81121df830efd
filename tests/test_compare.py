"""Paired comparison of two models' indexes (`evaluate --compare`): the paired bootstrap against
scipy's, exactness on hand-built cases, agreement with `Evaluator.run`, and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from dermsearch.cli.main import main
from dermsearch.errors import ConfigError
from dermsearch.evaluate import EvaluationConfig, Evaluator, choose_headline
from dermsearch.evaluate.compare import align_queries, compare, comparison_markdown, paired_difference
from dermsearch.evaluate.metrics import bootstrap_ci
from dermsearch.extract import Extractor
from dermsearch.search import Searcher

from .conftest import TINY, TORCH, indexed_archive

DIAGS = ["nv", "mel", "bkl"]
ROWS = [{"image_id": f"e{i}", "diagnosis": DIAGS[(i // 2) % 3], "lesion_id": f"L{i // 2}"} for i in range(24)]
SPLIT = ["test"] * 8 + ["val"] * 6 + ["train"] * 10


def test_paired_difference_agrees_with_scipys_paired_bootstrap():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(4)
    difficulty = rng.normal(0, 1, 400)                      # shared by both models: cancels in the difference
    a = difficulty + rng.normal(0, 0.1, 400)
    b = difficulty + 0.05 + rng.normal(0, 0.1, 400)
    ours = paired_difference(lambda i: a[i].mean(), lambda i: b[i].mean(), 400, 4000, seed=1)
    ref = bootstrap((a, b), lambda x, y: y.mean() - x.mean(), paired=True, n_resamples=4000,
                    method="percentile", random_state=2).confidence_interval
    assert ours["b_minus_a"] == pytest.approx(b.mean() - a.mean())
    assert ours["ci95"] == pytest.approx([ref.low, ref.high], abs=0.004)
    # two separate CIs are ~7x wider than the paired one: most of their width is the queries' difficulty
    lo_a, hi_a = bootstrap_ci(lambda i: a[i].mean(), 400, 1000, seed=1)
    assert hi_a - lo_a > 5 * (ours["ci95"][1] - ours["ci95"][0])


def test_paired_difference_resamples_clusters_together():
    # 50 lesions of 4 images: B is better by exactly 0.25 on every image of the odd lesions
    clusters = np.repeat(np.arange(50), 4)
    a = np.random.default_rng(0).random(200)
    b = a + np.where(clusters % 2 == 1, 0.25, 0.0)
    d = paired_difference(lambda i: a[i].mean(), lambda i: b[i].mean(), 200, 500, seed=0, clusters=clusters)
    assert d["b_minus_a"] == pytest.approx(0.125)
    # a resample's difference is 0.25 x its share of odd lesions: whole lesions move together
    lo, hi = d["ci95"]
    assert 0.07 < lo < 0.125 < hi < 0.18
    same = paired_difference(lambda i: a[i].mean(), lambda i: a[i].mean(), 200, 200, seed=0, clusters=clusters)
    assert same["b_minus_a"] == 0 and same["ci95"] == [0.0, 0.0]


@pytest.fixture(scope="module")
def two_models(tiny_extractor, tmp_path_factory):
    """The same 24 labelled images indexed by two models (the tiny model at 64 px and at 48 px)."""
    a = indexed_archive(tmp_path_factory.mktemp("cmp_a"), ROWS, tiny_extractor)
    b = indexed_archive(tmp_path_factory.mktemp("cmp_b"), ROWS, Extractor(replace(TINY, image_size=48), TORCH))
    split = a.parent / "split.csv"
    split.write_text("image_id,split\n" + "".join(f"e{i},{s}\n" for i, s in enumerate(SPLIT)))
    return a, b, split


def _ids(names):
    return [f"e{i}" for i, s in enumerate(SPLIT) if s in names]


def test_compare_reports_each_models_own_figures_and_their_paired_difference(two_models):
    ix_a, ix_b, _ = two_models
    ea, eb = Evaluator(Searcher(ix_a)), Evaluator(Searcher(ix_b))
    cfg = EvaluationConfig(k=3, vote_k=4, bootstrap=200)
    queries, candidates = _ids({"test"}), _ids({"train", "val"})
    c = compare(ea, eb, ea.queries_from_index(queries), eb.queries_from_index(queries), candidates, cfg,
                selection=(_ids({"val"}), _ids({"train"})))
    ra = ea.run(ea.queries_from_index(queries), candidates, cfg)
    rb = eb.run(eb.queries_from_index(queries), candidates, cfg)
    assert c.queries == 8 and c.candidates == 16 and set(c.measures) == set(ra.measures)
    for m, d in c.measures.items():
        for metric in ("macro_p@3", "melanoma_auc_vote4"):
            assert d[metric]["a"] == pytest.approx(ra.measures[m][metric]["value"])
            assert d[metric]["b"] == pytest.approx(rb.measures[m][metric]["value"])
            assert d[metric]["b_minus_a"] == pytest.approx(d[metric]["b"] - d[metric]["a"])
            lo, hi = d[metric]["ci95"]
            assert lo <= d[metric]["b_minus_a"] <= hi
    # each model's measure chosen on val by the same rule as `evaluate --choose-on`
    quiet = replace(cfg, bootstrap=0)
    sel_a = ea.run(ea.queries_from_index(_ids({"val"})), _ids({"train"}), quiet)
    sel_b = eb.run(eb.queries_from_index(_ids({"val"})), _ids({"train"}), quiet)
    chosen = c.chosen["macro_p@3"]
    assert chosen["measure_a"] == choose_headline(sel_a, "macro_p@3")[0]
    assert chosen["measure_b"] == choose_headline(sel_b, "macro_p@3")[0]
    assert c.chosen["melanoma_auc_vote4"]["measure_b"] == choose_headline(sel_b, "melanoma_auc_vote4")[0]
    assert chosen["a"] == pytest.approx(c.measures[chosen["measure_a"]]["macro_p@3"]["a"])
    assert chosen["b"] == pytest.approx(c.measures[chosen["measure_b"]]["macro_p@3"]["b"])
    assert "heads not compared" in " ".join(c.notes)          # the tiny models have no trained head
    md = comparison_markdown(c)
    assert md.startswith("**Paired comparison**") and "`style`" in md


def test_unlabelled_queries_and_a_partial_overlap_keep_the_pairs_aligned(two_models):
    """Queries without a diagnosis or melanoma status leave those metrics in both models alike, and
    only the queries both sets hold are compared: the figures stay those of `Evaluator.run` on them."""
    ix_a, ix_b, _ = two_models
    ea, eb = Evaluator(Searcher(ix_a)), Evaluator(Searcher(ix_b))
    cfg = EvaluationConfig(k=3, vote_k=4, bootstrap=50)
    candidates = _ids({"train", "val"})

    def blind(q):       # e1 and e4 unlabelled: no diagnosis, melanoma unknown
        hide = np.isin(q.ids.astype(str), ["e1", "e4"])
        return replace(q, diagnosis=np.where(hide, "", q.diagnosis).astype(object),
                       melanoma=np.where(hide, np.nan, q.melanoma))

    qa = blind(ea.queries_from_index(_ids({"test"})))
    qb = blind(eb.queries_from_index(_ids({"test"})[2:]))         # B lacks e0 and e1
    c = compare(ea, eb, qa, qb, candidates, cfg)
    assert c.queries == 6 and any("6 queries in both sets" in n for n in c.notes)
    shared = _ids({"test"})[2:]
    ra = ea.run(blind(ea.queries_from_index(shared)), candidates, cfg)
    rb = eb.run(blind(eb.queries_from_index(shared)), candidates, cfg)
    for m in ("cosine", "style", "i1_sd"):
        for metric in ("macro_p@3", "melanoma_auc_vote4"):
            assert c.measures[m][metric]["a"] == pytest.approx(ra.measures[m][metric]["value"], nan_ok=True)
            assert c.measures[m][metric]["b"] == pytest.approx(rb.measures[m][metric]["value"], nan_ok=True)


def test_a_model_against_itself_differs_by_nothing(two_models):
    ix_a, _, _ = two_models
    ea = Evaluator(Searcher(ix_a))
    q = ea.queries_from_index(_ids({"test"}))
    c = compare(ea, ea, q, q, _ids({"train", "val"}), EvaluationConfig(k=3, vote_k=4, bootstrap=100))
    for d in c.measures.values():
        for v in d.values():
            assert v["b_minus_a"] == 0 and v["ci95"] == [0.0, 0.0]


def test_compare_refuses_what_would_not_be_a_paired_comparison(two_models):
    ix_a, ix_b, _ = two_models
    ea, eb = Evaluator(Searcher(ix_a)), Evaluator(Searcher(ix_b))
    q = ea.queries_from_index(_ids({"test"}))
    relabelled = replace(q, diagnosis=np.array(["nv"] * len(q), dtype=object))
    with pytest.raises(ConfigError, match="label 4 shared queries differently"):
        align_queries(q, relabelled)
    with pytest.raises(ConfigError, match="not in both indexes"):
        compare(ea, eb, q, eb.queries_from_index(_ids({"test"})), ["e20", "nope"])
    with pytest.raises(ConfigError, match="chosen on other queries"):
        compare(ea, eb, q, eb.queries_from_index(_ids({"test"})), _ids({"train"}),
                selection=(_ids({"test"}), _ids({"train"})))
    with pytest.raises(ConfigError, match="no queries or no candidates to choose"):     # e.g. --choose-on vall
        compare(ea, eb, q, eb.queries_from_index(_ids({"test"})), _ids({"train"}), selection=([], _ids({"train"})))
    doubled = ea.queries_from_index(_ids({"test"}) + ["e0"])
    with pytest.raises(ConfigError, match="holds e0 more than once"):
        align_queries(doubled, q)
    other_lesions = replace(q, lesion_id=np.array([f"X{i}" for i in range(len(q))], dtype=object))
    with pytest.raises(ConfigError, match="diagnosis, melanoma or lesion"):
        align_queries(q, other_lesions)


def test_cli_evaluate_compare(two_models, capsys):
    ix_a, ix_b, split = two_models
    base = ["evaluate", str(ix_a), "--compare", str(ix_b), "--split", str(split), "--query-split", "test",
            "--candidate-split", "train", "val", "-k", "3", "--vote-k", "4", "--bootstrap", "50", "--quiet"]
    assert main(base + ["--choose-on", "val", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["a"], out["b"], out["queries"], out["candidates"]) == (str(ix_a), str(ix_b), 8, 16)
    assert set(out["chosen"]) == {"macro_p@3", "melanoma_auc_vote4"} and out["config"]["ci_unit"] == "lesion"
    assert main(base) == 0
    assert "B - A (95 % CI)" in capsys.readouterr().out
    assert main(base + ["--out", str(split.parent / "r")]) == 2
    assert "--compare does not combine with --out" in capsys.readouterr().err
    assert main(base + ["--choose-on", "val", "--choose-metric", "map@k"]) == 2       # would be silently ignored
    assert "--compare does not combine with --choose-metric" in capsys.readouterr().err


def test_an_index_whose_model_no_longer_loads_is_still_compared_without_its_head(two_models, monkeypatch):
    """An index of an earlier release's packaged model keeps valid stored vectors: both `evaluate` and
    the comparison rank with them and say why the head is missing, instead of stopping."""
    from dermsearch.index.store import ModelMismatchError

    ix_a, ix_b, _ = two_models
    ea, eb = Evaluator(Searcher(ix_a)), Evaluator(Searcher(ix_b))

    def gone(queries):
        raise ModelMismatchError(f"{ix_b} was built with model 1234; this run uses model 5678")

    monkeypatch.setattr(eb, "head_probabilities", gone)
    q = ea.queries_from_index(_ids({"test"}))
    cfg = EvaluationConfig(k=3, vote_k=4, bootstrap=20)
    c = compare(ea, eb, q, eb.queries_from_index(_ids({"test"})), _ids({"train", "val"}), cfg)
    assert c.head is None and any("heads not compared" in n and "built with model 1234" in n for n in c.notes)
    assert c.measures["cosine"]["macro_p@3"]["b"] >= 0
    report = eb.run(eb.queries_from_index(_ids({"test"})), _ids({"train", "val"}), cfg)
    assert report.head is None and any(n.startswith("no head AUC: the index's model cannot be loaded")
                                       for n in report.notes)
