"""`export`: an index out again as one Parquet file (ids, metadata, the feature; --style adds the Grams)."""

from __future__ import annotations

import json

from .common import err, file_to_write
from .options import Common, index_dir

__all__ = ["register"]


def register(sub, common: Common) -> None:
    ex = sub.add_parser("export", parents=[common.json],
                        help="write an index's rows to a Parquet file (pandas, polars and datasets read it as is)",
                        description="One row per image: id, path, diagnosis, melanoma, lesion_id, patient_id, "
                                    "license, attribution, meta (every stored column, JSON text) and the feature "
                                    "vector (list of float32); --style adds the stored Gram (style) vector.")
    index_dir(ex)
    ex.add_argument("out", type=file_to_write, metavar="OUT.parquet", help="the Parquet file to write (replaced "
                    "only when complete)")
    ex.add_argument("--style", action="store_true", help="also export the style vectors (about 330 KB per image)")
    ex.set_defaults(handler=cmd_export)


def cmd_export(args) -> int:
    from ..index import Index
    from ..index.export import export_parquet

    written = export_parquet(Index.open(args.index), args.out, style=args.style)
    if args.json:
        print(json.dumps(written, indent=1))
    else:
        err.print(f"exported {written['rows']} images (version {written['version']}) to {written['file']}: "
                  f"{_size(written['bytes'])}, feature {written['feature_dim']}-d"
                  + (f", style {written['style_dim']}-d" if written["style_dim"] else ""))
    return 0


def _size(n: int) -> str:
    """A file size for people: ``812 KB``, ``2.9 MB`` (never ``0.0 MB`` for a small export)."""
    return f"{n / 1e6:.1f} MB" if n >= 1e6 else f"{max(1, round(n / 1e3))} KB"
