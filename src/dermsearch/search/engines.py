"""The one place that knows the engines: which one serves a search, opened from an index or a snapshot.

Every engine keeps the :class:`~dermsearch.search.engine.Engine` contract; what differs is where
its rows live and how it reads them. :func:`open_engine` chooses by an :class:`EngineSpec`:

- ``exact`` (the default): every row, every byte. On the CPU (:class:`ExactEngine`, the rows in
  RAM or memory-mapped from the fast-mode files), or on a CUDA GPU (:class:`DeviceEngine`) when the
  spec's device names one (``auto``: when torch sees one);
- ``fast``: compressed vectors choose candidates, the exact rows re-rank them (the fast-mode files
  of the index's current version, written by ``dermsearch optimize``: :mod:`.fast`);
- ``certified``: exact answers from an int8 first pass over the style vectors (:mod:`.certified`).
  An index without style vectors has nothing for that pass: it is searched exactly (by the engine
  exact mode would use), and every result says so in its notes;
- with a Dask client, the sharded exact engine: the rows live on the workers (:mod:`.sharded`); in
  fast mode, the sharded fast engine: each worker holds its shard of the fast-mode files
  (:mod:`.fast_sharded`).

:func:`open_version` loads one index version for search (an :class:`OpenVersion`: the snapshot of
ids and labels, and the rows, read from the fast-mode files when they serve that version, else
from LanceDB); its :meth:`~OpenVersion.engine` opens any mode's engine over those rows once and
keeps it, so a searcher can take the mode per request.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..config.search import SearchConfig
from ..errors import ConfigError
from ..extract.vectors import Vectors
from ..index.store import Index, Snapshot
from ..names import SEARCH_MODES
from .engine import Engine, ExactEngine, QueryRanking, checked_style_blocks
from .fast import FastIndex, FastModeMissing, fast_dir
from .fast_rows import FullRowsError
from .kernels import kernel_for
from .measures import stored_components

__all__ = ["EngineSpec", "OpenVersion", "open_engine", "open_version", "search_device", "index_components"]

SHARDED_MODES = ("exact", "fast")        # the modes a Dask cluster serves
CERTIFIED_WITHOUT_STYLE = ("certified mode: this index stores no style vectors (built with style=False), so there "
                           "is no int8 style pass: searched exactly")


@dataclass(frozen=True)
class EngineSpec:
    """Which engine: ``mode`` (``exact``, ``fast``, ``certified``); ``device``, where exact search
    runs (``auto``: a CUDA GPU when torch sees one, else the CPU; ``cpu``; ``cuda``/``cuda:N``);
    ``dask``, a ``distributed.Client`` for sharded exact or fast search; ``max_checked``, the certified
    engine's largest share of rows one query may check exactly."""

    mode: str = SearchConfig.mode
    device: str = "cpu"
    dask: Any = None
    max_checked: float = SearchConfig.max_checked

    def __post_init__(self) -> None:
        if self.mode not in SEARCH_MODES:
            raise ConfigError(f"mode must be one of {', '.join(SEARCH_MODES)}, not {self.mode!r}")
        if self.dask is not None and self.mode not in SHARDED_MODES:
            raise ConfigError("sharded (Dask) search is exact or fast: use mode='exact' or mode='fast' with dask")

    def with_mode(self, mode: str | None) -> EngineSpec:
        return self if mode is None or mode == self.mode else dataclasses.replace(self, mode=mode)


def index_components(manifest: dict) -> tuple[str, ...]:
    """The components an index's rows allow (from its manifest: style vectors, masks)."""
    return stored_components(bool(manifest["style_dim"]), bool(manifest["mask_bytes"]))


def search_device(device: str) -> str | None:
    """The CUDA device exact search runs on: ``device`` when it names one, or the first GPU for
    ``auto`` when torch sees one; None for the CPU engine."""
    if device.startswith("cuda"):
        return device
    if device == "auto":
        from ..extract.encoder import cuda_possible

        if cuda_possible():
            import torch

            return "cuda" if torch.cuda.is_available() else None
    return None


@dataclass(eq=False)
class OpenVersion:
    """One index version opened for search: its ``snapshot`` (ids and labels; the rows too unless
    sharded), the ``exact`` engine over its rows (None when sharded), the fast-mode files when they
    serve this version, the ``sharded`` engine on a Dask cluster, and the manifest's Gram
    ``layout``. Engines are opened on first use and kept (:meth:`engine`)."""

    snapshot: Snapshot
    exact: ExactEngine | None
    fast: FastIndex | None = None
    sharded: Any = None
    layout: Sequence[dict] | None = None
    directory: str | None = None          # the index directory (None for a snapshot alone)
    _engines: dict = field(default_factory=dict, repr=False)
    _lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def engine(self, spec: EngineSpec) -> Engine:
        """The engine of ``spec``'s mode over this version (opened once, then kept; requests on
        several threads share it)."""
        key = (spec.mode, spec.device, spec.max_checked)
        with self._lock:
            if key not in self._engines:
                self._engines[key] = _choose(self, spec)
            return self._engines[key]

    def close(self) -> None:
        """Let go of the shards on a Dask cluster (nothing else holds outside resources)."""
        if self.sharded is not None:
            self.sharded.close()
            self.sharded = None
        self._engines.clear()


def _choose(v: OpenVersion, spec: EngineSpec) -> Engine:
    """The engine choice, in one place."""
    if v.sharded is not None:
        if spec.mode != v.sharded.mode:
            raise ConfigError(f"these Dask shards serve {v.sharded.mode} search, not {spec.mode}: open a searcher "
                              f"with mode='{spec.mode}' and dask for it" if spec.mode in SHARDED_MODES else
                              "sharded (Dask) search is exact or fast: use mode='exact' or mode='fast' with dask")
        return v.sharded
    exact = v.exact if v.exact is not None or v.fast is None else v.fast.exact    # read on first use
    if spec.mode == "fast":
        if v.fast is None:
            where = f"{v.directory} (version {v.snapshot.version})" if v.directory else "these rows"
            raise FastModeMissing(f"no fast-mode files serve {where}; run 'dermsearch optimize "
                                  f"{v.directory or 'INDEX'}'")
        return v.fast
    if spec.mode == "certified":
        if exact.styles is None:
            return _Noted(v.engine(spec.with_mode("exact")), CERTIFIED_WITHOUT_STYLE)
        from .certified import CertifiedEngine

        return CertifiedEngine(exact, max_checked=spec.max_checked,
                               files=None if v.fast is None else v.fast.directory, layout=v.layout)
    gpu = search_device(spec.device)
    if gpu is not None:
        from .device import DeviceEngine

        return DeviceEngine(exact.vectors, gpu, style_blocks=exact.style_blocks)   # the matrices in GPU memory
    return exact


class _Noted:
    """An engine whose every ranking carries a note (a mode served by another engine says so)."""

    def __init__(self, engine: Engine, note: str):
        self.inner, self.note = engine, note

    kernel = property(lambda self: self.inner.kernel)
    components = property(lambda self: self.inner.components)

    def __len__(self) -> int:
        return len(self.inner)

    def take(self, rows: Sequence[int]) -> Vectors:
        return self.inner.take(rows)

    def rank(self, batch: Vectors, valid: np.ndarray, measures: Sequence[str], k: int) -> list[QueryRanking]:
        out = self.inner.rank(batch, valid, measures, k)
        for r in out:
            r.notes.append(self.note)
        return out


def open_engine(source: Index | Snapshot | OpenVersion, spec: EngineSpec = EngineSpec(),
                layout: Sequence[dict] | None = None) -> Engine:
    """The engine ``spec`` asks for over ``source``: an index (its current version, as
    :func:`open_version`), an opened version, or a snapshot with its rows in memory (``layout``:
    its index's ``style_layers``; fast mode and Dask need an index)."""
    if isinstance(source, Index):
        source = open_version(source, spec)
    elif isinstance(source, Snapshot):
        if spec.mode == "fast" or spec.dask is not None:
            raise ConfigError(f"{spec.mode if spec.dask is None else 'sharded'} search opens an index, not a snapshot")
        source = OpenVersion(source, ExactEngine.of(source.vectors,
                                                    style_blocks=checked_style_blocks(source.styles, layout)),
                             layout=layout)
    return source.engine(spec)


def open_version(index: Index, spec: EngineSpec = EngineSpec()) -> OpenVersion:
    """The index's current version opened for search. On a Dask cluster the rows are sharded
    across the workers; otherwise they come from the fast-mode files of that version when those
    match it (memory-mapped: opening reads no vectors; with the labels too when the files hold
    them), else from LanceDB. Fast mode needs those files (:class:`FastModeMissing` otherwise)."""
    layout = index.manifest.get("style_layers")
    if spec.dask is not None:
        return _sharded(index, spec, layout)
    fast = _fast_files(index, required=spec.mode == "fast")
    if fast is not None:
        # the exact engine over the fast-mode files' rows; when their style rows live elsewhere (the
        # index's table, a tier) fast mode does not read them all: exact mode does, on first use
        e = fast.exact if fast.exact_mapped or spec.mode != "fast" else None
        a = fast.arrays
        vec = dict(features=a["features"], styles=None if e is None else e.styles, masks=a.get("masks"),
                   mask_areas=a.get("mask_areas"))
        if (rows := fast.rows(index.manifest)) is not None:
            # the fast-mode files of the current version hold its rows and labels: LanceDB is not opened
            snap = Snapshot(fast.info["index_version"], fast.ids.astype(object), rows["paths"], rows["diagnosis"],
                            rows["melanoma"], rows["lesion_id"], rows["meta_json"], **vec)
            return OpenVersion(snap, e, fast, layout=layout, directory=str(index.directory))
        # the fast-mode files hold the exact rows memory-mapped: only the metadata is read here
        s = index.snapshot(vectors=False)
        if s.version == fast.info["index_version"] and np.array_equal(s.ids.astype(str), fast.ids):
            return OpenVersion(dataclasses.replace(s, **vec), e, fast, layout=layout, directory=str(index.directory))
        if spec.mode == "fast":
            raise FastModeMissing(f"the fast-mode files of {index.directory} do not match its current "
                                  f"version; run 'dermsearch optimize {index.directory}'")
    s = index.snapshot()           # no fast-mode files serve this version: the rows from LanceDB
    return OpenVersion(s, ExactEngine.of(s.vectors, style_blocks=checked_style_blocks(s.styles, layout)),
                       layout=layout, directory=str(index.directory))


def _fast_files(index: Index, required: bool) -> FastIndex | None:
    """The fast-mode files of the index's newest version: None when there are none (or of another
    format), unless ``required`` (fast mode): then :class:`FastModeMissing` says what to run."""
    try:
        return FastIndex.open(fast_dir(index.directory, index.head_version()))
    except FullRowsError:
        if required:
            raise                       # names the missing or unreadable location
        return None                     # exact and certified modes read the index's own rows
    except FastModeMissing as e:
        if required:
            why = str(e) if "format" in str(e) else (f"{index.directory} has no fast-mode files for "
                                                     f"version {index.version}")
            raise FastModeMissing(f"{why}; run 'dermsearch optimize {index.directory}'") from None
        return None


def _sharded(index: Index, spec: EngineSpec, layout) -> OpenVersion:
    from .sharded import ShardedEngine

    s = index.snapshot(vectors=False)     # the vectors stay on the workers
    m = index.manifest
    if spec.mode == "fast":
        from .fast_sharded import ShardedFastEngine

        engine = ShardedFastEngine.for_index(spec.dask, index, s, index_components(m))
        return OpenVersion(s, None, sharded=engine, layout=layout, directory=str(index.directory))
    engine = ShardedEngine(spec.dask, index.directory, s.version, len(s), components=index_components(m),
                           kernel=kernel_for(len(s), max(m["feature_dim"], m["style_dim"])))
    return OpenVersion(s, None, sharded=engine, layout=layout, directory=str(index.directory))
