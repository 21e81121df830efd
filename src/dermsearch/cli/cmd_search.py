"""`search`: the most similar indexed images for one query image; `calibrate`: this machine's
product kernel for exact search."""

from __future__ import annotations

import json
import sys

from ..config import SearchConfig
from ..names import MEASURES
from .common import UsageError, count, existing_file, file_to_write
from .options import Common, add_config_flags, runtime_of

__all__ = ["register", "filters_from"]


def register(sub, common: Common) -> None:
    s = sub.add_parser("search", parents=[common.index, common.device, common.json, common.mode],
                       help="find the most similar indexed images for a query image")
    s.add_argument("query", type=existing_file, metavar="QUERY_IMAGE")
    add_config_flags(s, SearchConfig, ("k",), flags={"k": "-k"}, types={"k": count})
    s.add_argument("--measure", nargs="+", choices=MEASURES, metavar="NAME",
                   help=f"measures to compute (default all): {', '.join(MEASURES)}")
    s.add_argument("--exclude-id", nargs="+", default=[], metavar="ID", help="leave these ids out of the candidates "
                   "(default none)")
    s.add_argument("--where", action="append", default=[], metavar="COL=V1,V2",
                   help="keep candidates whose COL is one of the values, case-insensitive (e.g. "
                        "diagnosis=melanoma,nevus; sex=female); repeatable")
    s.add_argument("--range", action="append", default=[], metavar="COL=LO:HI",
                   help="keep candidates with LO <= COL <= HI (e.g. age_approx=30:60; either end may be empty); "
                        "repeatable")
    s.add_argument("--html", type=file_to_write, metavar="FILE", help="write an HTML contact sheet")
    s.add_argument("--no-explain", action="store_true", help="leave out each hit's per-layer style loss and mask "
                   "overlap (the 'explain' block; never computed for -k 0)")
    s.add_argument("--dask", metavar="SCHEDULER_ADDRESS", help="shard the index across this Dask cluster's workers "
                   "and search there (--mode exact or fast; the same results as local)")
    s.set_defaults(handler=cmd_search)

    c = sub.add_parser("calibrate", parents=[common.json],
                       help="measure which BLAS reads a large matrix fastest here (exact search uses it; "
                            "cached per machine, measured on first use otherwise)")
    c.add_argument("--force", action="store_true", help="measure again even when this machine is cached")
    c.set_defaults(handler=cmd_calibrate)


def cmd_calibrate(args) -> int:
    from ..search.kernels import calibrate

    record = calibrate(force=args.force)
    if args.json:
        print(json.dumps(record, indent=1))
        return 0
    m = record["measured"]
    print(f"{record['machine']['cpu']} ({record['machine']['cores']} cores): exact search uses the "
          f"{record['choice']} kernel ({'cached' if record['cached'] else 'measured now'}, {record['path']})")
    for name, figures in m["kernels"].items():
        print(f"  {name:6s} " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    return 0


def filters_from(where: list[str], ranges: list[str]):
    """``--where COL=V1,V2`` and ``--range COL=LO:HI`` as a :class:`Filters`."""
    from ..search import Filters

    equals, bounds = {}, {}
    for item in where:
        col, sep, values = item.partition("=")
        if not sep or not col or not values:
            raise UsageError(f"--where expects COL=V1,V2, got {item!r}")
        equals[col.strip()] = tuple(v.strip() for v in values.split(","))
    for item in ranges:
        col, sep, span = item.partition("=")
        lo, sep2, hi = span.partition(":")
        try:
            bounds[col.strip()] = (float(lo) if lo.strip() else None, float(hi) if hi.strip() else None)
        except ValueError:
            sep2 = ""
        if not sep or not sep2 or not col:
            raise UsageError(f"--range expects COL=LO:HI with numbers, got {item!r}")
    return Filters(equals, bounds)


def check_filters(searcher, filters, exclude_ids=()) -> None:
    """Refuse a filter on a column the index does not have (naming the ones it has), and a filter
    that leaves no candidate (naming the values there are), before the query is encoded."""
    if not filters:
        return
    meta = searcher.metadata()
    columns = {"diagnosis", "lesion_id", "melanoma"} | {c for row in meta for c in row}
    hidden = {"image_id", "image_path", "mask_path"}
    for flag, cols in (("--where", filters.equals), ("--range", filters.ranges)):
        for col in cols:
            if col not in columns or col in hidden:
                raise UsageError(f"{flag} {col}: the index has no such column; its columns: "
                                 f"{', '.join(sorted(columns - hidden))}")
    if searcher.candidate_mask(exclude_ids, filters).any():
        return
    seen = []
    for col in filters.equals:
        values = sorted({str(v) for v in searcher._column(col) if v not in (None, "")})
        seen.append(f"{col} here is one of {', '.join(values[:12])}{' ...' if len(values) > 12 else ''}")
    for col in filters.ranges:
        values = [v for v in (_number(x) for x in searcher._column(col)) if v is not None]
        seen.append(f"{col} here spans {min(values):g}..{max(values):g}" if values else f"{col} holds no numbers")
    raise UsageError("the filters leave no candidate (" + "; ".join(seen) + "); loosen --where / --range")


def _number(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if v == v else None


def cmd_search(args) -> int:
    from ..search import Searcher

    filters = filters_from(args.where, args.range)
    searcher = Searcher(args.index, runtime=runtime_of(args), mode=args.mode, dask=args.dask,
                        max_checked=args.max_checked)
    try:
        return _search(searcher, filters, args)
    finally:
        if args.dask:
            searcher.close()              # the shards leave the cluster's workers


def _search(searcher, filters, args) -> int:
    from ..extract.images import ImageError

    if len(searcher.snapshot) == 0:
        raise UsageError(f"{args.index} holds no images; add some first: dermsearch index SOURCE --index {args.index}")
    check_filters(searcher, filters, args.exclude_id)
    try:
        query = searcher.encode(args.query)
    except ImageError as e:
        raise UsageError(f"query {args.query}: {e}") from None
    explain = args.k > 0 and not args.no_explain and (args.json or args.html is not None)
    result = searcher.search(query, k=args.k, measures=args.measure, exclude_ids=args.exclude_id,
                             filters=filters, explain=explain)
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from .render import print_tables

        print_tables(result)
    if args.html:
        from .render import write_contact_sheet

        overlays = {}
        if explain:
            for hits in result.results.values():
                for h in hits:
                    if h.id not in overlays:
                        overlays[h.id] = searcher.mask_overlay(query, h.id)
        write_contact_sheet(result, args.query, args.html, overlays)
        if not args.json:
            print(f"contact sheet: {args.html}")
    return 0
