"""Human-facing renderings of a :class:`SearchResult`: a terminal table and an HTML sheet."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..search import SearchResult
from ..search.sheet import write_contact_sheet
from .common import tagged

__all__ = ["print_tables", "write_contact_sheet"]   # the sheet lives in search/sheet.py (the web app uses it too)

_LABELS = {
    "euclidean": "Euclidean score ES", "cosine": "Cosine CSnew", "style": "Style score SS",
    "dice": "Dice DC", "i1_ed": "I1 ED (ES, DC)", "i1_cd": "I1 CD (CSnew, DC)",
    "i1_ecd": "I1 ECD (ES, CSnew, DC)", "i1_se": "I1 SE (SS, ES)", "i1_sc": "I1 SC (SS, CSnew)",
    "i1_sd": "I1 SD (SS, DC)",
}


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def print_tables(result: SearchResult, console: Console | None = None) -> None:
    console = console or Console()
    header = tagged("Query", "bold", f"{result.query}   candidates: {result.candidates}   k: {result.k or 'all'}")
    console.print(header, soft_wrap=True)
    for msg in result.messages:
        console.print(tagged("note:", "yellow", msg), soft_wrap=True)
    for measure, hits in result.results.items():
        table = Table(title=f"{measure} — {_LABELS[measure]}", title_justify="left", expand=False)
        for col, just in (("#", "right"), ("id", "left"), ("diagnosis", "left"), ("score", "right"),
                          ("ES", "right"), ("CSnew", "right"), ("SS", "right"), ("DC", "right")):
            table.add_column(col, justify=just)
        for h in hits:
            c = h.components
            table.add_row(str(h.rank), Text(str(h.id)), Text(h.diagnosis or "-"), f"{h.score:.4f}",
                          _fmt(c["euclidean"]), _fmt(c["cosine"]), _fmt(c["style"]), _fmt(c["dice"]))
        console.print(table)


