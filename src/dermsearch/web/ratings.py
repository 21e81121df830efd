"""Blinded ratings of the web app: sessions, judgements and their CSV exports, in SQLite."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import ConfigError

__all__ = ["RatingStore", "strict_bool"]


class RatingStore:
    """Blinded ratings, durable in SQLite inside the index directory."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        with self._connect() as db:
            db.executescript("""
                CREATE TABLE IF NOT EXISTS items (session TEXT, query_id TEXT, item TEXT, candidate_id TEXT,
                                                  measure TEXT, rank INTEGER);
                CREATE TABLE IF NOT EXISTS ratings (session TEXT, query_id TEXT, item TEXT, similar INTEGER,
                                                    rater TEXT, created REAL, PRIMARY KEY (session, item));
                CREATE TABLE IF NOT EXISTS owners (session TEXT PRIMARY KEY, owner TEXT);
            """)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add_session(self, session: str, rows: list[tuple], owner: str | None = None) -> None:
        with self._lock, self._connect() as db:
            db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", [(session, *r) for r in rows])
            if owner is not None:
                db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", (session, owner))

    def rate(self, session: str, ratings: list[tuple[str, str, int]], rater: str, user: str | None = None) -> int:
        """Store judgements; with ``user`` (authentication on) only the session's own user may."""
        with self._lock, self._connect() as db:
            if user is not None:
                row = db.execute("SELECT owner FROM owners WHERE session = ?", (session,)).fetchone()
                if row is None or row[0] != user:
                    raise PermissionError("this rating session belongs to another rater")
            known = {(q, i) for q, i in db.execute(
                "SELECT DISTINCT query_id, item FROM items WHERE session = ?", (session,))}
            bad = [(q, i) for q, i, _ in ratings if (q, i) not in known]
            if bad:
                raise KeyError(f"unknown items for this session: {bad[:3]}")
            db.executemany("INSERT OR REPLACE INTO ratings VALUES (?, ?, ?, ?, ?, ?)",
                           [(session, q, i, int(bool(s)), rater, time.time()) for q, i, s in ratings])
        return len(ratings)

    def export(self, which: str) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        with self._connect() as db:
            if which == "key":
                w.writerow(["query_id", "item", "candidate_id", "measure", "rank"])
                # rated sessions only: a page load that was never rated is not a judgement
                w.writerows([_cell(c) for c in row] for row in db.execute(
                    "SELECT query_id, session || '/' || item, candidate_id, measure, rank FROM items "
                    "WHERE session IN (SELECT DISTINCT session FROM ratings) ORDER BY rowid"))
            else:
                w.writerow(["query_id", "item", "similar", "rater"])
                w.writerows([_cell(c) for c in row] for row in db.execute(
                    "SELECT query_id, session || '/' || item, similar, rater FROM ratings ORDER BY created"))
        return buf.getvalue()


def strict_bool(v) -> bool:
    """JSON true/false only: the strings "false" or "0" must not count as similar."""
    if not isinstance(v, bool):
        raise ConfigError(f"'similar' must be true or false, not {v!r}")
    return v


def _cell(v):
    """A CSV cell a spreadsheet will not run as a formula."""
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v
