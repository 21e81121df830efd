"""Evaluation: metrics on hand-computed cases, agreement with Searcher, lesion exclusion,
CIs, the rating round trip, and the CLI."""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from dermsearch.cli.main import main
from dermsearch.evaluate import EvaluationConfig, Evaluator
from dermsearch.evaluate.metrics import (
    average_precision_at_k,
    bootstrap_ci,
    macro_mean,
    precision_at_k,
    vote_auc,
)
from dermsearch.evaluate.rating import score_ratings, write_rating_sheet
from dermsearch.search import Searcher

from .conftest import indexed_archive, lesion_image


def test_precision_and_ap_hand_values():
    rel = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    assert precision_at_k(rel).tolist() == [0.4, 0.0, 1.0]
    # query 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / min(5, R=2)
    ap = average_precision_at_k(rel, np.array([2, 0, 9]))
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert ap[1] == 0.0 and ap[2] == pytest.approx(1.0)
    # R larger than k: the denominator is k
    assert average_precision_at_k(np.array([[0, 1, 0, 0, 0]], bool), np.array([40]))[0] == pytest.approx(0.5 / 5)


def test_macro_mean_weighs_groups_equally():
    v = np.array([1.0, 1.0, 1.0, 0.0])
    g = np.array(["nv", "nv", "nv", "mel"])
    assert macro_mean(v, g) == 0.5 and v.mean() == 0.75


def test_vote_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 50)
    votes = rng.integers(0, 2, (50, 16))
    assert vote_auc(y, votes) == pytest.approx(roc_auc_score(y, votes.mean(1)))
    assert np.isnan(vote_auc(np.zeros(5), votes[:5]))


def test_bootstrap_ci_contains_point_and_is_deterministic():
    x = np.random.default_rng(1).random(200)
    lo, hi = bootstrap_ci(lambda i: x[i].mean(), len(x), 500, seed=3)
    assert lo < x.mean() < hi
    assert (lo, hi) == bootstrap_ci(lambda i: x[i].mean(), len(x), 500, seed=3)


@pytest.fixture(scope="module")
def lesion_index(tiny_extractor, tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    diags = ["nv", "mel", "bkl"]
    rows = [{"image_id": f"e{i}", "diagnosis": diags[(i // 2) % 3], "lesion_id": f"L{i // 2}"}   # 2j, 2j+1: one lesion
            for i in range(18)]
    return root, Searcher(indexed_archive(root, rows, tiny_extractor), extractor=tiny_extractor)


def test_rankings_equal_searcher_and_exclude_same_lesion(lesion_index):
    _, s = lesion_index
    ev = Evaluator(s)
    q = ev.queries_from_index()
    top, n_rel = ev.rank(q, config=EvaluationConfig(k=5, vote_k=16, batch_size=4))
    lesion = dict(zip(s.snapshot.ids, s.snapshot.lesion_id))
    for qi, qid in enumerate(q.ids):
        same = [i for i in s.snapshot.ids if lesion[i] == lesion[qid]]
        res = s.search(s.query_for_id(qid), k=16, exclude_ids=same)
        for m, hits in res.results.items():
            assert [s.snapshot.ids[j] for j in top[m][qi]] == [h.id for h in hits], (m, qid)
            assert lesion[qid] not in {lesion[s.snapshot.ids[j]] for j in top[m][qi]}
    # 18 images, 9 lesions, 3 diagnoses: 6 same-diagnosis images, minus the query's 2 lesion images
    assert n_rel.tolist() == [4] * 18


@pytest.mark.slow
def test_run_report_cis_contain_points(lesion_index):
    _, s = lesion_index
    ev = Evaluator(s)
    rep = ev.run(ev.queries_from_index(), config=EvaluationConfig(k=3, vote_k=4, bootstrap=300))
    assert rep.queries == 18 and rep.candidates == 18
    for stats in rep.measures.values():
        for key in ("p@3", "macro_p@3", "map@3"):
            v, (lo, hi) = stats[key]["value"], stats[key]["ci95"]
            assert lo <= v <= hi, key
        assert set(stats["per_diagnosis_p@3"]) == {"nv", "mel", "bkl"}


def test_candidate_restriction(lesion_index):
    _, s = lesion_index
    ev = Evaluator(s)
    cands = [f"e{i}" for i in range(10, 18)]
    top, _ = ev.rank(ev.queries_from_index([f"e{i}" for i in range(4)]), cands,
                     EvaluationConfig(k=3, vote_k=3))
    for rows in top.values():
        assert {str(s.snapshot.ids[j]) for j in rows.ravel()} <= set(cands)


def test_rating_round_trip(lesion_index, tmp_path):
    _, s = lesion_index
    ev = Evaluator(s)
    rep = ev.run(ev.queries_from_index(), config=EvaluationConfig(k=3, vote_k=3, bootstrap=50))
    write_rating_sheet(rep, dict(zip(s.snapshot.ids, s.snapshot.paths)), tmp_path, n_queries=6, seed=2)
    html = (tmp_path / "sheet.html").read_text()
    assert "Download ratings CSV" in html and "euclidean" not in html and "style" not in html.lower().split("<body>")[1]
    # a 'rater' who judges 'similar' = same diagnosis must reproduce P@3 on those queries
    diag = dict(zip(s.snapshot.ids, s.snapshot.diagnosis))
    with open(tmp_path / "key.csv") as f:
        key = list(csv.DictReader(f))
    item_cand = {(r["query_id"], r["item"]): r["candidate_id"] for r in key}
    with open(tmp_path / "sheet.csv") as f, open(tmp_path / "ratings.csv", "w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["query_id", "item", "similar"])
        for r in csv.DictReader(f):
            cand = item_cand[(r["query_id"], r["item"])]
            w.writerow([r["query_id"], r["item"], int(diag[cand] == diag[r["query_id"]])])
    scores = score_ratings(tmp_path / "key.csv", tmp_path / "ratings.csv", bootstrap=50)
    rated = sorted({r["query_id"] for r in key})
    for m, v in scores.items():
        expect = np.mean([np.mean([diag[c] == diag[q] for c in rep.neighbours[m][list(rep.query_ids).index(q), :3]])
                          for q in rated])
        assert v["success_rate"] == pytest.approx(expect) and v["queries"] == 6
    # an unrated item is a clear error
    rows = (tmp_path / "ratings.csv").read_text().splitlines()
    (tmp_path / "partial.csv").write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(ValueError, match="not rated"):
        score_ratings(tmp_path / "key.csv", tmp_path / "partial.csv")


def test_rating_sheet_escapes_a_hostile_query_id(tmp_path):
    from html.parser import HTMLParser
    from types import SimpleNamespace

    from PIL import Image

    hostile = "x'\"><script>alert(1)</script>&amp;"
    ids = np.array(["a", "b", "c", hostile])
    paths = {}
    for i, cid in enumerate(ids):
        paths[cid] = str(tmp_path / f"{i}.png")
        Image.new("RGB", (12, 12), (40 * i, 80, 120)).save(paths[cid])
    nb = {"m": np.array([[ids[(q + j) % 4] for j in (1, 2)] for q in range(4)])}
    rep = SimpleNamespace(config=SimpleNamespace(k=2), query_ids=ids, neighbours=nb, query_paths=None)
    write_rating_sheet(rep, paths, tmp_path / "out", n_queries=4, seed=0)
    page = (tmp_path / "out" / "sheet.html").read_text()
    assert "<script>alert" not in page and page.count("<script>") == 1
    assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;amp;" in page

    class Boxes(HTMLParser):  # what a browser would hand the download script as data-q
        seen: list = []

        def handle_starttag(self, tag, attrs):
            if tag == "input":
                self.seen.append(dict(attrs)["data-q"])

    Boxes().feed(page)
    assert hostile in Boxes.seen and set(Boxes.seen) == set(ids)
    assert page.count("<section>") == 4 and page.count("data:image/jpeg;base64,") == 4 + 8


def test_cli_evaluate_writes_report(lesion_index, tmp_path, capsys):
    root, _ = lesion_index
    split = tmp_path / "split.csv"
    split.write_text("image_id,split\n" + "".join(f"e{i},{'test' if i < 6 else 'train'}\n" for i in range(18)))
    rc = main(["evaluate", str(root / "ix"), "--split", str(split), "--query-split", "test",
               "--candidate-split", "train", "-k", "3", "--vote-k", "4", "--bootstrap", "50", "--quiet",
               "--out", str(tmp_path / "rep"), "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["queries"] == 6 and out["candidates"] == 12
    for name in ("report.json", "report.md", "measures.png", "per_diagnosis.png"):
        assert (tmp_path / "rep" / name).stat().st_size > 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "| Style Score (`style`) |" in md and "macro-P@3" in md


def test_cli_evaluate_out_writes_the_report_without_the_plots_extra(lesion_index, tmp_path, capsys, monkeypatch):
    """A core install (no matplotlib) writes report.json and report.md and says what the PNGs need."""
    root, _ = lesion_index
    (tmp_path / "rep").mkdir()
    (tmp_path / "rep" / "measures.png").write_bytes(b"an earlier report's plot")
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # import matplotlib -> ImportError
    rc = main(["evaluate", str(root / "ix"), "-k", "3", "--vote-k", "4", "--bootstrap", "10", "--quiet",
               "--out", str(tmp_path / "rep")])
    captured = capsys.readouterr()
    assert rc == 0 and "report written to" in captured.out and "report.json, report.md)" in captured.out
    assert "no plots" in captured.err and "pip install -e '.[plots]'" in captured.err
    assert json.loads((tmp_path / "rep" / "report.json").read_text())["queries"] == 18
    assert (tmp_path / "rep" / "report.md").stat().st_size > 0 and not (tmp_path / "rep" / "measures.png").exists()


def test_cluster_bootstrap_resamples_lesions_not_images():
    from dermsearch.evaluate.metrics import bootstrap_ci, lesion_clusters

    # two lesions of 50 images each, one always right, one always wrong: two observations, not 100
    values = np.r_[np.ones(50), np.zeros(50)]
    lesions = np.array(["A"] * 50 + ["B"] * 50)

    def mean(i):
        return values[i].mean()

    per_image = bootstrap_ci(mean, 100, 2000, 0)
    per_lesion = bootstrap_ci(mean, 100, 2000, 0, clusters=lesions)
    assert per_image[0] > 0.35 and per_image[1] < 0.65           # ~0.5 +- 0.1
    assert per_lesion == (0.0, 1.0)                             # resamples of 2 lesions: 0, 0.5 or 1
    # 100 singletons: the cluster bootstrap is the ordinary one, draw for draw
    singles = lesion_clusters([None] * 100)
    assert len(set(singles)) == 100
    a = bootstrap_ci(mean, 100, 500, 3, clusters=np.arange(100))
    assert abs(a[0] - per_image[0]) < 0.05 and abs(a[1] - per_image[1]) < 0.05
    # every resample keeps a lesion's images together
    seen = []
    bootstrap_ci(lambda i: seen.append(i) or 0.0, 100, 20, 1, clusters=lesions)
    for idx in seen:
        assert len(idx) == 100 and np.all((idx < 50).sum() % 50 == 0)
    with pytest.raises(ValueError, match="cluster labels"):
        bootstrap_ci(mean, 100, 10, 0, clusters=lesions[:10])


def test_unknown_diagnosis_queries_leave_the_melanoma_metrics(lesion_index, tmp_path):
    """isic-uda1 marks its 'unknown' rows melanoma=0: they must not count as non-melanoma."""
    root, searcher = lesion_index
    with open(tmp_path / "q.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "image_path", "diagnosis", "melanoma"])
        for i, (d, m) in enumerate([("mel", 1), ("nv", 0), ("unknown", 0), ("nv", 0)]):
            lesion_image(100 + i).save(tmp_path / f"q{i}.png")
            w.writerow([f"q{i}", f"q{i}.png", d, m])
    q = Evaluator(searcher).queries_from_csv(tmp_path / "q.csv")
    assert list(q.diagnosis) == ["mel", "nv", "", "nv"]
    assert np.isnan(q.melanoma[2]) and q.melanoma.tolist()[:2] == [1.0, 0.0]
    # ...and the melanoma figures are computed over the three known queries only
    ev, cfg = Evaluator(searcher), EvaluationConfig(bootstrap=0)
    top, n_rel = ev.rank(q, config=cfg)
    outcomes = ev.outcomes(q, top, n_rel, cfg)
    report = ev.run(q, config=cfg)
    for m, o in outcomes.items():
        assert o.melanoma.tolist() == [1.0, 0.0, 0.0] and len(o.votes) == 3 and len(o.melanoma_precision) == 3
        assert sorted(o.groups.tolist()) == ["mel", "nv", "nv"]      # and the diagnosis metrics over three too
        expected = roc_auc_score([1, 0, 0], o.votes.mean(axis=1))          # by hand: the share of melanomas
        assert report.measures[m]["melanoma_auc_vote16"]["value"] == pytest.approx(expected, nan_ok=True)
    assert any("1 queries without a diagnosis" in n for n in report.notes)


def test_knn_majority_and_balanced_accuracy_by_hand():
    from sklearn.metrics import balanced_accuracy_score

    from dermsearch.evaluate.metrics import balanced_accuracy, knn_majority

    nb = np.array([["nv", "mel", "mel", "nv", "bcc"],      # 2 nv, 2 mel: the tie goes to the nearer (nv, rank 1)
                   ["mel", "mel", "nv", "nv", "nv"],       # 3 nv
                   ["bcc", "nv", "mel", "df", "akiec"]], dtype=object)   # all single: the nearest
    assert knn_majority(nb).tolist() == ["nv", "nv", "bcc"]
    rng = np.random.default_rng(0)
    true = rng.choice(["nv", "mel", "bcc"], 200, p=[0.7, 0.2, 0.1]).astype(object)
    pred = np.where(rng.random(200) < 0.6, true, "nv").astype(object)
    assert balanced_accuracy(true, pred) == pytest.approx(balanced_accuracy_score(true, pred))


def test_cli_headline_is_chosen_on_other_queries(lesion_index, tmp_path, capsys):
    root, _ = lesion_index
    split = tmp_path / "split.csv"
    names = ["test"] * 6 + ["val"] * 4 + ["train"] * 8
    split.write_text("image_id,split\n" + "".join(f"e{i},{s}\n" for i, s in enumerate(names)))
    base = ["evaluate", str(root / "ix"), "--split", str(split), "--query-split", "test", "-k", "3",
            "--vote-k", "4", "--bootstrap", "20", "--quiet"]
    assert main(base + ["--candidate-split", "train", "val", "--choose-on", "val", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    h = out["headline"]
    assert h["metric"] == "macro_p@3" and "against the 8 candidates outside them (4 queries)" in h["rule"]
    assert h["measure"] == max(h["selection"], key=lambda m: h["selection"][m])      # best on val ...
    assert h["value"] == out["measures"][h["measure"]]["macro_p@3"]["value"]         # ... reported on test
    assert "knn3_balanced_accuracy" in out["measures"]["style"]
    assert main(base + ["--headline", "cosine"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("**Headline: `cosine`, macro_p@3") and "3-NN balanced accuracy" in md
    assert main(base + ["--choose-on", "test"]) == 2                                 # never choose on test
    assert "overlaps the query splits" in capsys.readouterr().err


def test_cli_cross_source_headline_is_chosen_on_the_index_val_rows(lesion_index, tmp_path, capsys):
    """External queries (another source, its own label names) get a headline chosen on the index's
    own `val` rows, never on themselves: the cross-source report tunes nothing on its queries."""
    root, _ = lesion_index
    split = tmp_path / "split.csv"
    names = ["test"] * 6 + ["val"] * 4 + ["train"] * 8
    split.write_text("image_id,split\n" + "".join(f"e{i},{s}\n" for i, s in enumerate(names)))
    with open(tmp_path / "q.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "image_path", "diagnosis", "melanoma"])
        for i, (d, m) in enumerate([("melanoma", 1), ("nevus", 0), ("unknown", 0), ("nevus", 0), ("melanoma", 1)]):
            lesion_image(200 + i).save(tmp_path / f"x{i}.png")
            w.writerow([f"x{i}", f"x{i}.png", d, m])
    assert main(["evaluate", str(root / "ix"), "--queries", str(tmp_path / "q.csv"), "--diagnosis-map",
                 "nevus=nv,melanoma=mel", "--split", str(split), "--candidate-split", "train", "val",
                 "--choose-on", "val", "--choose-metric", "melanoma_auc_vote4", "-k", "3", "--vote-k", "4",
                 "--bootstrap", "20", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    h = out["headline"]
    assert out["queries"] == 5 and out["candidates"] == 12
    assert h["metric"] == "melanoma_auc_vote4" and "against the 8 candidates outside them (4 queries)" in h["rule"]
    assert h["measure"] == max(h["selection"], key=lambda m: h["selection"][m])
    assert h["value"] == out["measures"][h["measure"]]["melanoma_auc_vote4"]["value"]
    assert set(out["measures"]["cosine"]["per_diagnosis_p@3"]) == {"mel", "nv"}       # mapped; unknown left out
    assert any("1 queries without a diagnosis" in n for n in out["notes"])


def test_cli_headline_chosen_on_both_sources(lesion_index, tmp_path, capsys):
    """--choose-also-on: the headline is the measure with the best sum of the metric over the index's
    `val` rows and another source's `xval` images, each set checked by hand against its own run; the
    reported `xtest` images are never among those chosen on."""
    from dermsearch.evaluate.headline import best_measure

    root, _ = lesion_index
    split = tmp_path / "split.csv"
    names = ["test"] * 6 + ["val"] * 4 + ["train"] * 8
    split.write_text("image_id,split\n" + "".join(f"e{i},{s}\n" for i, s in enumerate(names)))
    xsplit = tmp_path / "xsplit.csv"
    with open(tmp_path / "q.csv", "w", newline="") as f, open(xsplit, "w") as fs:
        w = csv.writer(f)
        w.writerow(["image_id", "image_path", "diagnosis", "melanoma"])
        fs.write("image_id,split\n")
        for i in range(10):
            d, m = ("melanoma", 1) if i % 3 == 0 else ("nevus", 0)
            lesion_image(300 + i).save(tmp_path / f"x{i}.png")
            w.writerow([f"x{i}", f"x{i}.png", d, m])
            fs.write(f"x{i},{'xval' if i < 5 else 'xtest'}\n")
    base = ["evaluate", str(root / "ix"), "--queries", str(tmp_path / "q.csv"), "--diagnosis-map",
            "nevus=nv,melanoma=mel", "--query-split-csv", str(xsplit), "--query-split", "xtest",
            "--split", str(split), "--candidate-split", "train", "val", "--choose-on", "val",
            "--choose-metric", "melanoma_auc_vote4", "-k", "3", "--vote-k", "4", "--bootstrap", "20", "--json",
            "--quiet"]
    assert main(base + ["--choose-also-on", str(tmp_path / "q.csv"), str(xsplit), "xval"]) == 0
    out = json.loads(capsys.readouterr().out)
    h = out["headline"]
    assert out["queries"] == 5 and "sum of melanoma_auc_vote4" in h["rule"] and "xval (5 queries vs 12" in h["rule"]
    # by hand: each selection run on its own, the values summed, the best taken
    ev = Evaluator(Searcher(root / "ix"))
    ids = ev.searcher.snapshot.ids
    sp = dict(zip([f"e{i}" for i in range(18)], names))
    cfg = EvaluationConfig(k=3, vote_k=4, bootstrap=0)
    val = ev.run(ev.queries_from_index([i for i in ids if sp[i] == "val"]), [i for i in ids if sp[i] == "train"], cfg)
    xq = ev.queries_from_csv(tmp_path / "q.csv", {"nevus": "nv", "melanoma": "mel"},
                             only_ids={f"x{i}" for i in range(5)})
    xv = ev.run(xq, [i for i in ids if sp[i] in ("train", "val")], cfg)
    total = {m: val.measures[m]["melanoma_auc_vote4"]["value"] + xv.measures[m]["melanoma_auc_vote4"]["value"]
             for m in val.measures}
    assert h["selection"] == pytest.approx(total)
    assert h["measure"] == best_measure(total)
    assert h["value"] == out["measures"][h["measure"]]["melanoma_auc_vote4"]["value"]
    # choosing on the images reported is refused; the flag needs --choose-on
    assert main(base + ["--choose-also-on", str(tmp_path / "q.csv"), str(xsplit), "xtest"]) == 2
    assert "other queries than those reported" in capsys.readouterr().err
    no_choose = [a for a in base if a not in ("--choose-on", "val")]
    assert main(no_choose + ["--choose-also-on", str(tmp_path / "q.csv"), str(xsplit), "xval"]) == 2
    assert "needs --choose-on" in capsys.readouterr().err


def test_item_bootstrap_agrees_with_scipy():
    """The item-level percentile bootstrap is scipy's (the cluster one has no scipy counterpart)."""
    from scipy.stats import bootstrap

    x = np.random.default_rng(5).normal(size=300)
    ours = bootstrap_ci(lambda i: x[i].mean(), len(x), 4000, seed=1)
    ref = bootstrap((x,), np.mean, n_resamples=4000, method="percentile", random_state=2).confidence_interval
    assert ours == pytest.approx((ref.low, ref.high), abs=0.015)


def test_split_selection_keeps_chosen_rows_out_of_the_candidates():
    from dermsearch.evaluate.headline import split_selection

    split = {"a": "train", "b": "val", "c": "val", "d": "test"}
    ids = ["a", "b", "c", "d", "e"]                      # "e": in no split, so never chosen on
    assert split_selection(ids, split, ["val"]) == (["b", "c"], ["a", "d", "e"])
    assert split_selection(ids, split, ["val", "test"], ["a", "b"]) == (["b", "c", "d"], ["a"])
