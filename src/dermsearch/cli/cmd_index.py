"""`index`, `optimize`, `compact`, `info`, `export-onnx`, `backbones`: building and looking after an index."""

from __future__ import annotations

import json
import time

from ..config import BuildConfig, ExtractorConfig, FastConfig, Runtime
from ..index.readers import FIELDS as SOURCE_FIELDS
from ..index.readers import FORMATS as SOURCE_FORMATS
from ..presets import PRESETS
from .common import UsageError, err, existing_folder, existing_path, export_folder, folder_to_write, tagged
from .options import Common, add_config_flags, given, index_dir, optional, runtime_of

__all__ = ["register"]

# ExtractorConfig fields set by a flag (a new index only; absent: the preset's or the config's value)
_MODEL_FLAGS = ("backbone", "weights", "image_size", "mask_size", "gram_weights", "gram_pool", "gram_norm",
                "gram_margin", "fov", "max_side", "segmenter", "style", "masks")
# FastConfig fields set by optimize's flags
_FAST_FLAGS = ("style_dims", "feature_dims", "mask_grid", "candidates", "sketch_dims", "wide_candidates", "wide_rows",
               "normaliser_candidates", "fit_rows", "seed", "precision", "full_rows", "code_precision")


def register(sub, common: Common) -> None:
    ix = sub.add_parser("index", parents=[common.device, common.quiet],
                        help="build or extend an index from a folder or a labels CSV",
                        description="Index SOURCE (a folder of images or a labels CSV) into --index DIR. "
                                    "Images already in the index are skipped, so an interrupted run resumes.")
    ix.add_argument("source", nargs="?", type=existing_path,
                    help="folder of images (DICOM too; an ISIC Archive download folder), or a labels CSV: "
                    "dermsearch's, an ISIC Archive metadata.csv, HAM10000_metadata.csv, ISIC "
                    "challenge ground truth (detected from the columns)")
    src = ix.add_argument_group("source (docs/usage.md, 'Archives dermsearch reads')")
    src.add_argument("--format", default="auto", choices=SOURCE_FORMATS,
                     help="read SOURCE as this format instead of detecting it from its columns")
    src.add_argument("--columns", metavar="FIELD=COL,...", help="map the CSV's columns: image_id=isic_id,"
                     "diagnosis=diagnosis_3,... (fields: " + ", ".join(SOURCE_FIELDS) + ")")
    src.add_argument("--images", type=existing_folder, metavar="DIR", help="folder of the image files, found by id, "
                     "when the CSV has no image_path (default: beside the CSV and its images/ folder)")
    src.add_argument("--license", metavar="TEXT", help="licence of the images whose rows name none "
                     "(e.g. 'CC BY-NC 4.0')")
    src.add_argument("--attribution", metavar="TEXT", help="attribution of the images whose rows name none")
    ix.add_argument("--index", required=True, type=folder_to_write, metavar="DIR",
                    help="the index folder (created when missing; an existing index is added to)")
    ix.add_argument("--remove", nargs="+", metavar="ID", help="remove these image ids from the index")
    ix.add_argument("--check", action="store_true", help="verify the index's integrity and exit")
    m = ix.add_argument_group("model (new index only; an existing index keeps its own)")
    add_config_flags(m, ExtractorConfig, _MODEL_FLAGS, optional=True,
                     flags={"style": "--no-style", "masks": "--no-masks"},
                     helps={"style": "store no style vectors (smaller index)", "masks": "store no lesion masks",
                            "fov": "pool the features and Grams over the dermatoscope's field of view, leaving out "
                                   "its dark vignette (--no-fov: the whole frame, as indexes made before issue #40; "
                                   "default on, off for --weights imagenet/random and --preset paper)"})
    optional(m, "--preset", choices=sorted(PRESETS), help="paper: needs --weights and --segmenter from "
             "`train ... --preset paper` runs (see `dermsearch presets`)")
    add_config_flags(ix, Runtime, ("batch_size", "backend"), helps={"batch_size": "images per forward pass"})
    add_config_flags(ix, BuildConfig, ("commit_every",), helps={"commit_every": "images per atomic commit"})
    ix.add_argument("--dask", metavar="SCHEDULER_ADDRESS", help="extract on the workers of this Dask cluster "
                    "(e.g. tcp://10.0.0.5:8786); this process writes the index (docs/distributed.md)")
    add_config_flags(ix, BuildConfig, ("dask_chunk",), helps={"dask_chunk": "images per Dask task"})
    ix.set_defaults(handler=cmd_index)

    op = sub.add_parser("optimize", parents=[common.index],
                        help="write the fast-mode files of an index (PCA-compressed vectors, memory-mapped exact "
                             "rows, metadata); also makes opening the index instant",
                        description="Fast mode reads a few hundred bytes per image per query instead of 329 KB "
                                    "and re-ranks its candidates exactly; see docs/performance.md. Rerun after "
                                    "adding or removing images.")
    add_config_flags(op, FastConfig, _FAST_FLAGS)
    op.add_argument("--certified", action="store_true",
                    help="also write the int8 style copy that '--mode certified' reads (else it is built "
                         "each time a searcher opens the index); adds 1 byte per style value read")
    op.set_defaults(handler=cmd_optimize)

    cp = sub.add_parser("compact", parents=[common.index, common.json],
                        help="merge the index's small data files and delete old versions no reader holds",
                        description="Every commit of 'dermsearch index' adds data files; compaction merges them "
                                    "into one new version (same rows) and deletes the versions older than every "
                                    "version a running searcher holds. Fast-mode files are carried over.")
    cp.add_argument("--keep-versions", action="store_true", help="merge only; delete no old version")
    cp.set_defaults(handler=cmd_compact)

    ex = sub.add_parser("export-onnx", parents=[common.index],
                        help="export an index's networks to ONNX (for ONNX Runtime elsewhere)")
    ex.add_argument("--out", type=export_folder, required=True, metavar="OUT_DIR",
                    help="folder for extractor.onnx, segmenter.onnx and onnx.json (docs/usage.md: the contract)")
    ex.set_defaults(handler=cmd_export_onnx)

    inf = sub.add_parser("info", help="facts about an index")
    index_dir(inf)
    inf.set_defaults(handler=cmd_info)
    bb = sub.add_parser("backbones", help="list the registered backbones")
    bb.set_defaults(handler=cmd_backbones)


def cmd_index(args) -> int:
    from ..index import Index

    if args.check:
        index = Index.open(args.index)
        problems = index.check()
        for p in problems:
            err.print(tagged("problem:", "red", p))
        print(f"{args.index}: {len(index)} images, version {index.version}: "
              + ("OK" if not problems else f"{len(problems)} problem(s)"))
        return 1 if problems else 0
    if args.remove:
        index = Index.open(args.index)
        with index.writing():
            removed, unknown = index.remove(args.remove)
        for i in unknown:
            err.print(tagged("not in the index:", "yellow", i))
        print(f"removed {len(removed)} image(s); {len(index)} remain")
        return 0
    if not args.source:
        raise UsageError("index needs a SOURCE (or --remove / --check)")
    return _build(args)


def _build(args) -> int:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from ..index import Index
    from ..index.build import build_index, model_settings
    from ..presets import get_preset

    settings = given(args, _MODEL_FLAGS)
    if args.preset:
        preset = get_preset(args.preset)
        missing = [f"--{m}" for m in preset.missing(settings)]
        if missing:
            raise UsageError(f"--preset {args.preset} needs {' and '.join(missing)}: the ensemble from `dermsearch "
                             f"train classifier --preset {args.preset}` and the best.safetensors from `dermsearch "
                             f"train segmenter --preset {args.preset}`")
        settings = preset.index_settings(settings)
    config, notes = model_settings(args.index, settings)
    for note in notes:
        err.print(f"note: {note}")

    source = _source(args)

    def on_problem(p):  # printed with or without the progress bar
        progress.console.print(tagged("skipped", "yellow", f"{p.where}: {p.reason}"), soft_wrap=True)

    progress = Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=err, disable=args.quiet or not err.is_interactive,   # off a terminal: no blank line
                        transient=True)   # an error stays one line
    with progress:
        task = progress.add_task("index", total=None)
        runtime = runtime_of(args, batch_size=args.batch_size, backend=args.backend)

        def show(done, total):
            progress.update(task, completed=done, total=total)

        if args.dask:
            from ..index.distributed import build_index_dask

            report = build_index_dask(source, args.index, args.dask, config, runtime, args.commit_every,
                                      chunk_size=args.dask_chunk, on_problem=on_problem, progress=show)
        else:
            report = build_index(source, args.index, config, runtime, args.commit_every, on_problem=on_problem,
                                 progress=show)
    print(f"{report.index}: added {report.added}, already indexed {report.already_indexed}, "
          f"skipped {len(report.problems)} (of {report.found} found) in {report.seconds:.1f} s "
          f"({report.images_per_second:.1f} images/s); index holds {len(Index.open(args.index))} images")
    return 0


def _source(args):
    """SOURCE with the reading flags (--format, --columns, --images, --license, --attribution)."""
    from ..index.readers import ReadOptions, parse_columns
    from ..index.sources import Source

    return Source(args.source, ReadOptions(format=args.format, columns=parse_columns(args.columns),
                                           images=args.images, license=args.license, attribution=args.attribution))


def cmd_optimize(args) -> int:
    from ..index import Index
    from ..search.fast_build import optimize

    config = FastConfig(**{name: getattr(args, name) for name in _FAST_FLAGS})
    t0 = time.perf_counter()
    fast = optimize(Index.open(args.index), config, progress=lambda m: err.print(m), certified=args.certified)
    info = fast.info
    err.print(f"fast mode ready for version {info['index_version']} ({len(fast)} images) in "
              f"{time.perf_counter() - t0:.1f} s: style PCA {fast.arrays['style_basis'].shape[0]} dims "
              f"({100 * info['style_explained_variance']:.1f}% of the variance), feature PCA "
              f"{fast.arrays['feature_basis'].shape[0]} dims ({100 * info['feature_explained_variance']:.1f}%); "
              f"{fast.bytes_scanned_per_query / max(1, len(fast)):.0f} bytes scanned per image per query; "
              f"{fast.precision} re-rank rows")
    return 0


def cmd_compact(args) -> int:
    import dataclasses
    import json

    from ..index import Index

    index = Index.open(args.index)
    report = index.compact(cleanup=not args.keep_versions)       # carries the fast-mode files over too
    fast = report.fast_mode_files
    out = dataclasses.asdict(report)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    r = report
    err.print(f"version {r.version_before} -> {r.version_after}: {r.fragments_before} -> {r.fragments_after} data "
              f"fragments, {r.versions_before} -> {r.versions_after} versions kept, "
              f"{r.bytes_before / 1e6:.1f} -> {r.bytes_after / 1e6:.1f} MB of data files"
              + (f"; versions held by readers: {', '.join(map(str, r.held))}" if r.held else ""))
    if fast is not None:
        err.print(f"fast-mode files carried over to version {r.version_after}")
    elif (index.directory / "fast").is_dir() and r.version_after != r.version_before:
        err.print(f"fast-mode files were not for the compacted rows: run 'dermsearch optimize {index.directory}'")
    return 0


def cmd_export_onnx(args) -> int:
    from ..index import Index
    from .export import describe, export_index

    index = Index.open(args.index)
    print(describe(export_index(index, args.out)))
    return 0


def cmd_info(args) -> int:
    from ..index import Index

    index = Index.open(args.index)
    m = index.manifest
    snap = index.snapshot(vectors=False)
    diagnoses: dict[str, int] = {}
    for d in snap.diagnosis:
        diagnoses[d or "(none)"] = diagnoses.get(d or "(none)", 0) + 1
    print(json.dumps({"directory": str(args.index), "images": len(snap), "version": snap.version,
                      "fingerprint": m["fingerprint"], "extractor": m["extractor"],
                      "feature_dim": m["feature_dim"], "style_dim": m["style_dim"], "mask_size": m["mask_size"],
                      "diagnoses": dict(sorted(diagnoses.items())), "melanoma": _melanoma(snap.melanoma),
                      **_rights(snap),
                      "storage": _storage(index, len(snap))}, indent=1))
    return 0


def _storage(index, rows: int) -> dict:
    """Bytes on disk per image and fast mode's precision (search/fast_rows.py)."""
    from ..search.fast import fast_dir
    from ..search.fast_rows import storage_facts

    return storage_facts(index.directory, fast_dir(index.directory, index.head_version()), rows)


def _melanoma(flags) -> dict:
    """Images read as melanoma, not melanoma and of unknown status (dermsearch.labels' one rule)."""
    import numpy as np

    flags = np.asarray(flags, dtype=np.float64)
    return {"melanoma": int((flags == 1).sum()), "not melanoma": int((flags == 0).sum()),
            "unknown": int(np.isnan(flags).sum())}


def _rights(snap) -> dict:
    """Licences (with counts), attributions and patients of the index's images, from their metadata."""
    licenses: dict[str, int] = {}
    attributions: dict[str, int] = {}
    patients, lesions = set(), set()
    for text, lesion in zip(snap.meta_json, snap.lesion_id):
        meta = json.loads(text) if text else {}
        lic = meta.get("license") or "(none)"
        licenses[lic] = licenses.get(lic, 0) + 1
        if meta.get("attribution"):
            attributions[meta["attribution"]] = attributions.get(meta["attribution"], 0) + 1
        if meta.get("patient_id"):
            patients.add(meta["patient_id"])
        if lesion:
            lesions.add(lesion)
    return {"licenses": dict(sorted(licenses.items())), "attributions": dict(sorted(attributions.items())),
            "lesions": len(lesions), "patients": len(patients)}


def cmd_backbones(args) -> int:
    from ..models import list_backbones

    print("\n".join(list_backbones()))
    return 0
