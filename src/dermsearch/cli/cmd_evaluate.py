"""`evaluate`, `fit-gram-weights`, `eval-classifier`, `eval-segmenter`: measuring retrieval and models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..config import EvaluationConfig
from ..names import MEASURES
from .common import (
    UsageError,
    at_least,
    count,
    emit,
    err,
    existing_dir,
    existing_file,
    file_to_write,
    folder_to_write,
    positive_int,
)
from .options import Common, add_config_flags, runtime_of

__all__ = ["register"]


def register(sub, common: Common) -> None:
    _evaluate_parser(sub, common)
    fw = sub.add_parser("fit-gram-weights", parents=[common.index],
                        help="fit the style measure's layer weights on labelled index rows",
                        description="Fit non-negative layer weights beta_l of the style loss that maximise the "
                                    "style measure's macro-P@k for the query rows against the candidate rows "
                                    "(same lesion excluded), and write them as JSON for 'index --gram-weights "
                                    "FILE'. Fit on val, report test once.")
    fw.add_argument("--split", required=True, type=existing_file, metavar="CSV", help="image_id,split file")
    fw.add_argument("--query-split", nargs="+", default=["val"], metavar="NAME", help="the query rows' splits")
    fw.add_argument("--candidate-split", nargs="+", default=["train"], metavar="NAME",
                    help="the candidate rows' splits")
    add_config_flags(fw, EvaluationConfig, ("k", "exclude_same"), flags={"k": "-k"},
                     helps={"k": "the k of the macro-P@k fitted"})
    fw.add_argument("--out", required=True, type=file_to_write, metavar="JSON", help="the weights file to write")
    fw.set_defaults(handler=cmd_fit_gram_weights)

    mh = sub.add_parser("fit-metadata-head", parents=[common.index, common.device],
                        help="fit a melanoma head that reads age, sex and site beside the image (for evaluate "
                             "--metadata-head)",
                        description="Fit a logistic melanoma head over the image head's probability and each row's "
                                    "age, sex and lesion site (whatever the archive calls them) on the --fit-split "
                                    "rows, with the regularisation chosen by AUC on the --choose-on rows, and write "
                                    "it as JSON. Rows without metadata are scored from the image alone.")
    mh.add_argument("--split", required=True, type=existing_file, metavar="CSV", help="image_id,split file")
    mh.add_argument("--fit-split", nargs="+", default=["train"], metavar="NAME", help="the rows it is fitted on")
    mh.add_argument("--choose-on", nargs="+", default=["val"], metavar="SPLIT",
                    help="the rows whose AUC chooses the regularisation")
    mh.add_argument("--out", required=True, type=file_to_write, metavar="JSON", help="the head file to write")
    mh.set_defaults(handler=cmd_fit_metadata_head)

    ec = sub.add_parser("eval-classifier", parents=[common.labels, common.split, common.device],
                        help="melanoma AUC of a trained ensemble's head and of each member")
    ec.add_argument("weights", nargs="?", default="default", help="default (packaged) or a .safetensors / run dir")
    ec.add_argument("--on", metavar="NAME", help="split to evaluate (default: every row)")
    ec.add_argument("--limit", type=count, default=0, help="use only the first N images (0: all)")
    ec.set_defaults(handler=cmd_eval_classifier)

    es = sub.add_parser("eval-segmenter", parents=[common.labels, common.split, common.device, common.json],
                        help="Dice and Jaccard of a segmenter against ground-truth masks")
    es.add_argument("--on", nargs="+", default=None, metavar="NAME", help="splits to evaluate (default: all rows)")
    es.add_argument("--segmenter", nargs="+", default=["default"], metavar="S",
                    help="default (packaged), otsu, a run directory or a .safetensors file; several compare")
    es.add_argument("--image-size", type=at_least(8), default=128,
                    help="evaluation side in pixels (masks: nearest-neighbour)")
    es.set_defaults(handler=cmd_eval_segmenter)


def _evaluate_parser(sub, common: Common) -> None:
    """``evaluate``: its flags that set an :class:`EvaluationConfig` field come from the field."""
    ev = sub.add_parser("evaluate", parents=[common.index, common.split, common.device, common.json, common.quiet],
                        help="label-based retrieval metrics of every measure, with bootstrap CIs",
                        description="Rank all candidates for each query by each measure (the query and images of "
                                    "the same lesion_id excluded) and report P@k, macro-P@k, per-diagnosis and "
                                    "melanoma P@k, mAP@k and the melanoma AUC of a neighbour vote.")
    ev.add_argument("--queries", type=existing_file, metavar="CSV",
                    help="external labelled query images (a labels CSV); "
                    "default: rows of the index")
    ev.add_argument("--query-split", nargs="+", metavar="NAME", help="index rows of these splits are the queries "
                    "(with --queries: the rows of these splits in --query-split-csv)")
    ev.add_argument("--query-split-csv", type=Path, metavar="CSV", help="image_id,split file of the --queries "
                    "images (e.g. isic-uda1/split.csv with --query-split xval); rows outside the chosen splits "
                    "are never queries")
    add_config_flags(ev, EvaluationConfig, ("label_column", "exclude_same"))
    ev.add_argument("--candidate-split", nargs="+", metavar="NAME",
                    help="index rows of these splits are the candidates")
    add_config_flags(ev, EvaluationConfig, ("k", "vote_k", "bootstrap"), flags={"k": "-k"},
                     types={"bootstrap": positive_int}, helps={"bootstrap": "bootstrap resamples for the 95% CIs"})
    ev.add_argument("--choose-on", nargs="+", metavar="SPLIT", help="name the headline measure by a rule fixed in "
                    "advance: the best --choose-metric for these index rows (e.g. val) as queries against the "
                    "candidates outside them (needs --split)")
    ev.add_argument("--choose-also-on", nargs=3, metavar=("LABELS_CSV", "SPLIT_CSV", "SPLIT"),
                    help="with --choose-on: also weigh these external images (e.g. another clinic's isic-uda1 "
                         "labels.csv, its split.csv, xval) as queries against the report's candidates; the headline "
                         "is the measure with the highest sum of --choose-metric over both, equally weighted")
    ev.add_argument("--choose-metric", metavar="METRIC",
                    help="the metric --choose-on maximises (default macro_p@k, k as given by -k, so macro_p@5 with "
                         "the default -k; with --compare both macro_p@k and the vote AUC are chosen)")
    ev.add_argument("--headline", choices=MEASURES, metavar="MEASURE", help="headline this measure (fixed in advance)")
    add_config_flags(ev, EvaluationConfig, ("ci_unit", "seed"))
    add_config_flags(ev, EvaluationConfig, ("metadata_head",), types={"metadata_head": existing_file})
    ev.add_argument("--diagnosis-map", metavar="A=B,C=D", help="rename query diagnoses to the index's labels "
                    "(e.g. nevus=nv,melanoma=mel)")
    ev.add_argument("--compare", type=existing_dir, metavar="INDEX_B",
                    help="paired comparison: rank the same queries in INDEX_B (another model's index of the same "
                         "images) and report B - A per measure, for each model's measure chosen with --choose-on, "
                         "and for the heads, with one bootstrap of the queries' lesions for both")
    ev.add_argument("--out", type=folder_to_write, metavar="REPORT_DIR",
                    help="write report.json, report.md and PNG plots")
    ev.add_argument("--rating-sheet", type=folder_to_write, metavar="DIR",
                    help="also write a blinded rating sheet here")
    ev.add_argument("--rating-queries", type=positive_int, default=50, help="queries on the rating sheet (paper: 50)")
    ev.add_argument("--ratings", type=existing_file, metavar="CSV",
                    help="score a filled rating sheet (needs --rating-key)")
    ev.add_argument("--rating-key", type=existing_file, metavar="CSV", help="the key.csv written with the rating sheet")
    ev.set_defaults(handler=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from ..evaluate import EvaluationConfig, Evaluator
    from ..search import Searcher

    if args.compare:
        for flag in ("headline", "out", "rating_sheet", "ratings", "choose_metric", "metadata_head", "choose_also_on"):
            if getattr(args, flag):
                raise UsageError(f"--compare does not combine with --{flag.replace('_', '-')}")
    if args.ratings:
        return _score_ratings(args)
    split = _checked_split(args)
    evaluator = Evaluator(Searcher(args.index, runtime=runtime_of(args)))
    if args.compare:
        return _compare(args, evaluator, split)
    snap = evaluator.searcher.snapshot

    def in_splits(names):
        return [i for i in snap.ids if split.get(i) in set(names)]

    candidates = in_splits(args.candidate_split) if args.candidate_split else None
    report = _run(args, evaluator, candidates, in_splits, EvaluationConfig)
    if args.choose_on or args.headline:
        _headline(args, evaluator, report, split, candidates)
    _print_report(args, report)
    if args.out:
        _write_report(args, evaluator, report)
    if args.rating_sheet:
        from ..evaluate.rating import write_rating_sheet

        write_rating_sheet(report, dict(zip(snap.ids, snap.paths)), args.rating_sheet, args.rating_queries, args.seed)
        if not args.json:
            print(f"rating sheet written to {args.rating_sheet}/sheet.html (key: {args.rating_sheet}/key.csv)")
    return 0


def _score_ratings(args) -> int:
    """--ratings: the success rate per measure of a filled rating sheet."""
    from ..evaluate.rating import score_ratings

    if not args.rating_key:
        raise UsageError("--ratings needs --rating-key (the key.csv written with the sheet)")
    emit(score_ratings(args.rating_key, args.ratings, args.bootstrap, args.seed), args.json,
         lambda m, v: f"{m:10s} success rate {100 * v['success_rate']:.1f}% (95% CI {100 * v['ci95'][0]:.1f}-"
                      f"{100 * v['ci95'][1]:.1f}) over {v['queries']} queries")
    return 0


def _checked_split(args):
    """The --split file read (None without one), after the checks of the flags that go with it."""
    from ..evaluate import read_split

    if args.diagnosis_map and not all("=" in p for p in args.diagnosis_map.split(",")):
        raise UsageError(f"--diagnosis-map expects A=B,C=D, got {args.diagnosis_map!r}")
    split = read_split(args.split) if args.split else None
    if ((args.query_split and not args.queries) or args.candidate_split) and split is None:
        raise UsageError("--query-split / --candidate-split need --split")
    if args.queries and args.query_split and not args.query_split_csv:
        raise UsageError("with --queries, --query-split needs --query-split-csv (the queries' own split file)")
    if args.query_split_csv and not (args.queries and args.query_split):
        raise UsageError("--query-split-csv needs --queries and --query-split")
    if args.choose_on and args.headline:
        raise UsageError("give either --headline or --choose-on, not both")
    if args.choose_on and split is None:
        raise UsageError("--choose-on needs --split")
    if args.choose_also_on and not args.choose_on:
        raise UsageError("--choose-also-on needs --choose-on (the index rows it is weighed with)")
    if args.choose_on and args.query_split and set(args.choose_on) & set(args.query_split):
        raise UsageError(f"--choose-on {' '.join(args.choose_on)} overlaps the query splits: choose on other "
                         "queries than those reported")
    return split


def _print_report(args, report) -> None:
    from ..evaluate.report import to_markdown

    if args.json:
        print(json.dumps(report.to_json(), indent=1))
    else:
        print(to_markdown(report))
        print(f"{report.queries} queries x {len(report.measures)} measures x {report.candidates} candidates "
              f"ranked in {report.ranking_seconds:.1f} s ({report.seconds:.1f} s with the bootstrap CIs)")


def _write_report(args, evaluator, report) -> None:
    """--out: report.json and report.md, and the plots when the plots extra is installed."""
    from ..errors import MissingExtraError
    from ..evaluate.report import write_report

    index = evaluator.searcher.index
    extra = {"command": sys.argv, "index": str(args.index), "index_fingerprint": index.fingerprint,
             "extractor": index.manifest["extractor"]}
    try:
        write_report(report, args.out, extra)
        written = "report.json, report.md, measures.png, per_diagnosis.png"
    except MissingExtraError as e:   # the core writes the report; only its plots need the extra
        err.print(f"no plots: {e}")
        written = "report.json, report.md"
    if not args.json:
        print(f"report written to {args.out}/ ({written})")


def _run(args, evaluator, candidates, in_splits, EvaluationConfig):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, disable=args.quiet or not err.is_interactive,   # off a terminal: no blank line
                        transient=True)   # an error stays one line
    with progress:
        if args.queries:
            dmap = _diagnosis_map(args)
            task = progress.add_task("extracting queries", total=None)
            queries = evaluator.queries_from_csv(
                args.queries, dmap, on_problem=lambda p: err.print(f"skipped {p.where}: {p.reason}"),
                progress=lambda d, t: progress.update(task, completed=d, total=t), only_ids=_external_ids(args),
                label_column=args.label_column)
        else:
            queries = evaluator.queries_from_index(in_splits(args.query_split) if args.query_split else None,
                                                   args.label_column)
        if len(queries) == 0:
            raise UsageError(_no_queries(args))
        task = progress.add_task("ranking", total=len(queries))
        return evaluator.run(queries, candidates, EvaluationConfig(
            k=args.k, vote_k=args.vote_k, bootstrap=args.bootstrap, seed=args.seed, ci_unit=args.ci_unit,
            exclude_same=args.exclude_same, label_column=args.label_column,
            metadata_head=str(args.metadata_head) if args.metadata_head else None),
            progress=lambda d, t: progress.update(task, completed=d))


def _no_queries(args) -> str:
    """The one line for an evaluation left without a query: where they were looked for, and what to do."""
    where = args.queries or (f"{args.index}'s split {args.query_split!r}" if args.query_split else args.index)
    label = args.label_column or "diagnosis"
    return (f"no queries: no image of {where} has a {label!r} label; label the images, or give another "
            "--queries / --query-split")


def _external_ids(args) -> set[str] | None:
    """The --queries ids in --query-split (from --query-split-csv); None: every row."""
    return _ids_in(args.query_split_csv, args.query_split) if args.query_split_csv else None


def _ids_in(split_csv, names) -> set[str]:
    """The ids a split file puts in any of the splits ``names``."""
    from ..labels import read_split

    chosen = set(names)
    return {i for i, name in read_split(split_csv).items() if name in chosen}


def _compare(args, evaluator, split) -> int:
    from ..evaluate import EvaluationConfig, Evaluator
    from ..evaluate.compare import compare, comparison_markdown
    from ..evaluate.headline import split_selection
    from ..search import Searcher

    other = Evaluator(Searcher(args.compare, runtime=runtime_of(args)))
    ids = [str(i) for i in evaluator.searcher.snapshot.ids]
    in_b = set(map(str, other.searcher.snapshot.ids))

    def in_splits(names):
        return [i for i in ids if split.get(i) in set(names)]

    config = EvaluationConfig(k=args.k, vote_k=args.vote_k, bootstrap=args.bootstrap, seed=args.seed,
                              ci_unit=args.ci_unit, exclude_same=args.exclude_same, label_column=args.label_column)
    if args.queries:
        dmap = _diagnosis_map(args)

        def problem(p):
            err.print(f"skipped {p.where}: {p.reason}")

        only = _external_ids(args)
        qa = evaluator.queries_from_csv(args.queries, dmap, on_problem=problem, only_ids=only,
                                        label_column=args.label_column)
        qb = other.queries_from_csv(args.queries, dmap, only_ids=only,   # the same images fail for both: said once
                                    label_column=args.label_column)
    else:
        chosen = in_splits(args.query_split) if args.query_split else ids
        qa = evaluator.queries_from_index(chosen, args.label_column)
        qb = other.queries_from_index([i for i in chosen if i in in_b],   # the comparison notes what is left out
                                      args.label_column)
    if len(qa) == 0 or len(qb) == 0:
        raise UsageError(_no_queries(args))
    candidates = in_splits(args.candidate_split) if args.candidate_split else None
    selection = split_selection(ids, split, args.choose_on, candidates) if args.choose_on else None
    result = compare(evaluator, other, qa, qb, candidates, config, selection, (str(args.index), str(args.compare)))
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
    else:
        print(comparison_markdown(result))
    return 0


def _diagnosis_map(args) -> dict[str, str] | None:
    return dict(p.split("=", 1) for p in args.diagnosis_map.split(",")) if args.diagnosis_map else None


def _headline(args, evaluator, report, split, candidates) -> None:
    """Name the report's headline measure: given (--headline), or chosen on other queries (--choose-on)."""
    from ..evaluate import EvaluationConfig

    metric = args.choose_metric or "macro_p@k"
    if args.headline:
        report.set_headline(args.headline, metric.replace("@k", f"@{args.k}"),
                            "named with --headline before the evaluation")
        return
    also = []
    if args.choose_also_on:
        labels, split_csv, name = args.choose_also_on
        only = _ids_in(split_csv, [name])
        if not only:
            raise UsageError(f"--choose-also-on: no row of {split_csv} is in split {name!r}")
        queries = evaluator.queries_from_csv(labels, _diagnosis_map(args), only_ids=only,
                                             on_problem=lambda p: err.print(f"skipped {p.where}: {p.reason}"),
                                             label_column=args.label_column)
        pool = candidates if candidates is not None else list(evaluator.searcher.snapshot.ids)
        also.append((queries, pool, f"{labels} {name}"))
    evaluator.headline_on_splits(report, split, args.choose_on, candidates, metric, EvaluationConfig(
        k=args.k, vote_k=args.vote_k, seed=args.seed, exclude_same=args.exclude_same, label_column=args.label_column),
        also)


def cmd_fit_gram_weights(args) -> int:
    from ..evaluate import read_split
    from ..evaluate.gram_weights import fit_index_gram_weights, save_gram_weights
    from ..index import Index

    index = Index.open(args.index)
    unweighted = [e["stage"] for e in index.manifest.get("style_layers") or [] if e["beta"] <= 0]
    if unweighted:
        raise UsageError(f"{args.index} weights style stage(s) {', '.join(map(str, unweighted))} by 0 (built with "
                         f"--gram-weights {index.manifest['extractor'].get('gram_weights')}), so their distances "
                         "are not stored: fit on an index built with --gram-weights inverse-channels")
    r = fit_index_gram_weights(index, read_split(args.split), args.query_split, args.candidate_split, args.k,
                               exclude_same=args.exclude_same)
    save_gram_weights(args.out, r.fit, r.info)
    print(f"style macro-P@{args.k} on {'+'.join(args.query_split)} vs {'+'.join(args.candidate_split)}: "
          f"{r.before:.3f} with the index's weights, {r.fit.score:.3f} fitted "
          f"({r.held_out['mean']:.3f} held out in 2-fold cross-validation over "
          f"{r.info['fitted_on']['exclude_same']}s, same-{r.info['fitted_on']['exclude_same']} candidates excluded)")
    for e, share in zip(r.layout, r.fit.shares):
        print(f"  stage {e['stage']} {e['region']:6s} C={e['channels']:4d}  share of the loss {share:.3f}")
    flags = f" --gram-pool {r.info['gram_pool']} --gram-margin {r.info['gram_margin']}" \
        if r.info["gram_pool"] != "image" else ""
    flags += f" --gram-norm {r.info['gram_norm']}" if r.info["gram_norm"] != "none" else ""
    flags += "" if r.info["fov"] else " --no-fov"     # the Grams were fitted as that index pooled them
    flags += f" --max-side {r.info['max_side']}" if r.info["max_side"] else ""
    print(f"weights written to {args.out}; use them with: dermsearch index SOURCE --index NEW_DIR "
          f"--gram-weights {args.out}{flags}")
    return 0


def cmd_fit_metadata_head(args) -> int:
    from ..evaluate import Evaluator, read_split
    from ..evaluate.metadata_head import fit_metadata_head
    from ..search import Searcher

    evaluator = Evaluator(Searcher(args.index, runtime=runtime_of(args)))
    fit = fit_metadata_head(evaluator, read_split(args.split), args.fit_split, args.choose_on)
    fit.head.save(args.out)
    r = fit.rows
    print(f"fitted on {r['fit']} {'+'.join(args.fit_split)} rows ({r['fit_melanoma']} melanomas; "
          f"{r['fit'] - r['fit_rows_without_age']} with an age, {r['fit_rows_with_sex']} a sex, "
          f"{r['fit_rows_with_site']} a site)")
    print(f"melanoma AUC on {r['choose']} {'+'.join(args.choose_on)} rows: image head {fit.auc_image_only:.3f}; "
          + ", ".join(f"C={c:g} {a:.3f}" for c, a in fit.auc_by_c.items()) + f"; kept C={fit.head.C:g}")
    print(f"metadata head {fit.head.fingerprint} written to {args.out}; use it with: dermsearch evaluate "
          f"{args.index} --metadata-head {args.out} ...")
    return 0


def cmd_eval_classifier(args) -> int:
    from ..evaluate.classifier import evaluate_classifier
    from ..models.ensemble import default_ensemble_path

    weights = default_ensemble_path() if args.weights == "default" else Path(args.weights)
    if weights.is_dir():
        weights = weights / "ensemble.safetensors"
    evaluate_classifier(weights, args.labels, args.split, args.on, args.limit, runtime=runtime_of(args),
                        log=lambda m: print(m))
    return 0


def cmd_eval_segmenter(args) -> int:
    from ..evaluate.segmenter import compare_segmenters

    emit(compare_segmenters(args.labels, args.split, args.on, args.image_size, args.segmenter,
                            runtime=runtime_of(args)), args.json,
         lambda name, r: f"{name}: Dice {r['dice']:.4f} (95% CI {r['dice_ci95'][0]:.4f}-{r['dice_ci95'][1]:.4f}, "
                         f"median {r['dice_median']:.4f}), Jaccard {r['jaccard']:.4f} on {r['images']} images")
    return 0
