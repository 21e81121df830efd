"""What every request of the web app runs against: the newest index version, and per-client limits."""

from __future__ import annotations

import logging
import math
import threading
import time
from contextlib import contextmanager

from ..search import Searcher
from ..search.fast import FastModeMissing
from ..search.measures import MEASURE_INFO

__all__ = ["LiveIndex", "RateLimiter", "is_number"]

log = logging.getLogger("dermsearch.web")


class RateLimiter:
    """A token bucket per client: ``per_minute`` searches a minute, bursts of up to a sixth of that."""

    def __init__(self, per_minute: int):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 6.0)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, client: str) -> int:
        """0 when the request may go on, else the seconds to wait."""
        if self.rate <= 0:
            return 0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - last) * self.rate)
            if tokens >= 1:
                self._buckets[client] = (tokens - 1, now)
                return 0
            self._buckets[client] = (tokens, now)
            if len(self._buckets) > 10_000:          # forget idle clients
                self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 600}
            return max(1, math.ceil((1 - tokens) / self.rate))


class LiveIndex:
    """The searcher at the index's newest version. Each request checks the version (a LanceDB
    ``checkout_latest``, well under a millisecond); when another process has added or removed
    images, the snapshot is reloaded while requests wait (a readers/writer lock), so a removed
    image is gone from the very next response."""

    def __init__(self, searcher: Searcher, max_upload_bytes: int):
        self.searcher, self.max_upload_bytes = searcher, max_upload_bytes
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._check = threading.Lock()
        self._load()

    def _load(self) -> None:
        s = self.searcher
        self.snap, self.meta, self.version = s.snapshot, s.metadata(), s.snapshot.version
        self.site_col = "localization" if any("localization" in m for m in self.meta) else "site"
        self.age_col = "age" if any(is_number(m.get("age")) for m in self.meta) else "age_approx"
        self.patients: dict[str, list[str]] = {}     # patient id -> the ids of that patient's images
        for image_id, m in zip(self.snap.ids, self.meta):
            if m.get("patient_id"):
                self.patients.setdefault(str(m["patient_id"]), []).append(str(image_id))
        self.facts = self._facts()

    def _facts(self) -> dict:
        snap, meta, s = self.snap, self.meta, self.searcher
        diag: dict[str, int] = {}
        for d in snap.diagnosis:
            diag[d or "(none)"] = diag.get(d or "(none)", 0) + 1

        def values(col):
            return sorted({str(m[col]) for m in meta if m.get(col)})
        ages = [float(m[self.age_col]) for m in meta if is_number(m.get(self.age_col))]
        return {"images": len(snap), "version": snap.version, "fingerprint": s.index.fingerprint,
                "measure_info": {m: {"name": n, "about": a} for m, (n, a) in MEASURE_INFO.items()},
                "extractor": s.index.manifest["extractor"], "measures": list(s.available_measures()),
                "diagnoses": dict(sorted(diag.items())), "sites": values("localization") or values("site"),
                "sexes": values("sex"), "age_range": [min(ages), max(ages)] if ages else None,
                "has_masks": snap.masks is not None, "has_patients": bool(self.patients),
                "max_upload_bytes": self.max_upload_bytes}

    @contextmanager
    def current(self):
        with self._check:
            latest = self.searcher.index.latest_version()
        if latest != self.version:
            with self._cond:
                while self._writing or self._readers:
                    self._cond.wait()
                self._writing = True
            try:
                if self.searcher.index.latest_version() != self.version:
                    try:
                        self.searcher.refresh()
                    except FastModeMissing:
                        # the fast-mode files describe an older version: stay correct (a removed image
                        # must go at once) with exact search until 'dermsearch optimize' is run again
                        log.warning("the index changed and its fast-mode files are stale: serving exact search "
                                    "until 'dermsearch optimize %s' is run", self.searcher.index.directory)
                        self.searcher.refresh(mode="exact")
                    self._load()
            finally:
                with self._cond:
                    self._writing = False
                    self._cond.notify_all()
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._readers += 1
        try:
            yield self
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()


def is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False
