"""Blinded ratings of the web app: sessions, judgements and their CSV exports, in SQLite.

A session's items are opaque random tokens (nothing in a URL names a candidate); each item takes
one judgement, changed only by a post that says ``edit``; unrated sessions are capped per user."""

from __future__ import annotations

import csv
import io
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import ConfigError

__all__ = ["RatingStore", "strict_bool", "RatingConflict"]


class RatingConflict(ValueError):
    """Items already judged in this session, posted again without ``edit``."""


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
                CREATE INDEX IF NOT EXISTS items_session ON items (session);
            """)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def add_session(self, session: str, rows: list[tuple], owner: str | None = None, keep_open: int = 0) -> None:
        """Store a session's items; with ``keep_open``, the owner's oldest unrated sessions beyond that
        many are dropped (an unrated session is no judgement: the table stays bounded)."""
        who = owner or ""
        with self._lock, self._connect() as db:
            db.executemany("INSERT INTO items VALUES (?, ?, ?, ?, ?, ?)", [(session, *r) for r in rows])
            db.execute("INSERT OR REPLACE INTO owners VALUES (?, ?)", (session, who))
            if keep_open > 0:
                unrated = [s for (s,) in db.execute(
                    "SELECT session FROM owners WHERE owner = ? AND session NOT IN (SELECT DISTINCT session FROM "
                    "ratings) ORDER BY rowid", (who,))]
                stale = unrated[:max(0, len(unrated) - keep_open)]
                db.executemany("DELETE FROM items WHERE session = ?", [(s,) for s in stale])
                db.executemany("DELETE FROM owners WHERE session = ?", [(s,) for s in stale])

    def candidate(self, session: str, item: str, user: str | None = None) -> str | None:
        """The id an item token stands for (None: no such item, or another user's session)."""
        with self._connect() as db:
            if user is not None:
                row = db.execute("SELECT owner FROM owners WHERE session = ?", (session,)).fetchone()
                if row is None or row[0] != user:
                    return None
            if item == "query":
                row = db.execute("SELECT query_id FROM items WHERE session = ? LIMIT 1", (session,)).fetchone()
            else:
                row = db.execute("SELECT candidate_id FROM items WHERE session = ? AND item = ? LIMIT 1",
                                 (session, item)).fetchone()
        return None if row is None else row[0]

    def rate(self, session: str, ratings: list[tuple[str, str, int]], rater: str, user: str | None = None,
             edit: bool = False) -> int:
        """Store judgements; with ``user`` (authentication on) only the session's own user may. An item
        takes one judgement in one post, and keeps it unless ``edit`` says to change it."""
        items = [i for _, i, _ in ratings]
        if len(set(items)) != len(items):
            raise ConfigError("an item is judged more than once in this post: one judgement per item")
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
            if not edit:
                done = {i for (i,) in db.execute("SELECT item FROM ratings WHERE session = ?", (session,))}
                again = [i for i in items if i in done]
                if again:
                    raise RatingConflict(f"{len(again)} item(s) of this session are already rated; post with "
                                         "\"edit\": true to change a judgement")
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

    def sessions(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT COUNT(DISTINCT session) FROM items").fetchone()[0]


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
