"""Writing fast mode's files (:mod:`dermsearch.search.fast` reads them): PCA bases fitted on a
sample of the index, every row's projections, residual norms and residual sketches, coarse mask
cells, the exact feature and mask rows as memory-mappable ``.npy`` files, the style rows fast mode
re-ranks from at the stored precision and where the full rows live (:mod:`.fast_rows`), and
optionally certified mode's int8 style copy. Everything goes into a temporary directory that is
renamed into place, so a crash never leaves a half-written set; :func:`carry_forward` re-labels
the files after a compaction."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..index.fastfiles import carry_forward_files
from ..io import replace_dir, temp_dir_for
from .config import FastConfig
from .engine import dead_columns_zero, dead_style_ranges, live_style_blocks
from .fast import FAST_FORMAT, FastIndex, cell_counts, count_sketch, fast_dir, index_identity
from .fast_rows import (
    default_full_rows,
    remove_tier_rows,
    resolve_code_precision,
    resolve_precision,
    write_compact_rows,
    write_tier_rows,
)
from .kernels import power_of_two_scale, products

__all__ = ["FastIndexWriter", "optimize", "carry_forward", "sketch_hash", "write_mask_cells", "half_sketches"]


def write_mask_cells(mm, masks, mask_size: int, cfg: FastConfig, info: dict, chunk: int = 2048) -> None:
    """``mask_cells.npy`` of the bit-packed ``masks`` [N, bytes] (``mm(name, dtype, shape)`` makes a
    memory map in the directory being written): float32 pixel counts per cell, or where
    ``cfg.code_precision`` means fp16 (:func:`resolve_code_precision`) each count as a fraction of
    the cell's pixels (in [0, 1], exact where the cell's pixels are a power of two, and a query's
    products stay inside float16's range); ``info["mask_cells_unit"]`` says which."""
    n, px = masks.shape[0], (mask_size // cfg.mask_grid) ** 2
    half = resolve_code_precision(cfg.code_precision, n) == "fp16"
    cells = mm("mask_cells", np.float16 if half else np.float32, (n, cfg.mask_grid ** 2))
    for s in range(0, n, chunk):
        c = cell_counts(masks[s:s + chunk], mask_size, cfg.mask_grid)
        cells[s:s + chunk] = c / np.float32(px) if half else c
    cells.flush()
    info["mask_cells_unit"] = "fraction" if half else "count"


def half_sketches(directory: Path, cfg: FastConfig, info: dict, say: Callable[[str], None],
                  chunk: int = 65_536) -> None:
    """Where ``cfg.code_precision`` means fp16 for ``info["rows"]`` rows, rewrite ``style_sketch.npy``
    (written in float32) in float16, multiplied by the power of two that brings its largest
    magnitude into (0.5, 1] (``info["style_sketch_scale"]``: float16 keeps its relative precision
    whatever the model's scale, and no product leaves its range). ``info["code_precision"]``
    records what was stored; a sketch with a value that is not finite stays float32 (``say`` says
    so, and the record says ``mixed`` where the mask cells are float16). No proven bound uses the
    sketches: they only rank candidates."""
    path = directory / "style_sketch.npy"
    info["code_precision"] = resolve_code_precision(cfg.code_precision, info["rows"])
    if info["code_precision"] != "fp16" or not path.is_file():
        return
    src = np.load(path, mmap_mode="r")
    top = 0.0
    for a in range(0, src.shape[0], chunk):
        part = np.abs(src[a:a + chunk])
        if not np.isfinite(part).all():
            say("a style sketch is not finite: the sketches stay float32")
            info["code_precision"] = "mixed"
            return
        top = max(top, float(part.max(initial=0.0)))
    scale = power_of_two_scale(top)
    tmp = directory / "style_sketch.fp16.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=src.shape)
    for a in range(0, src.shape[0], chunk):
        out[a:a + chunk] = src[a:a + chunk] * np.float32(scale)
    out.flush()
    del out, src
    os.replace(tmp, path)
    info["style_sketch_scale"] = scale


def _fit_pca(sample: np.ndarray, dims: int, seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Mean, orthonormal basis [k, D] and explained-variance fraction of a float32 sample."""
    from sklearn.utils.extmath import randomized_svd

    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    centred = sample - mean
    k = min(dims, centred.shape[0] - 1, centred.shape[1])
    _, s, vt = randomized_svd(centred, k, n_iter=3, random_state=seed)
    total = float(np.einsum("ij,ij->", centred, centred, dtype=np.float64))
    explained = float((s.astype(np.float64) ** 2).sum() / max(total, 1e-30))
    return mean, np.ascontiguousarray(vt, dtype=np.float32), explained


def sketch_hash(width: int, buckets: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The count sketch's hash: a random order of the ``width`` coordinates (bucket b holds
    positions ``b·width//buckets`` up to the next bucket's start, so every bucket is used) and a
    random sign per coordinate (in that order)."""
    rng = np.random.default_rng([seed, 0x5eed])
    return rng.permutation(width).astype(np.int32), rng.choice(np.array([-1.0, 1.0], np.float32), width)


class FastIndexWriter:
    """Writes a fast-mode directory in row chunks (so an archive larger than RAM can be written),
    then fits the PCA bases on a sample and projects every row in :meth:`finish`."""

    def __init__(self, directory: str | os.PathLike, n: int, feature_dim: int, style_dim: int,  # noqa: PLR0913
                 mask_bytes: int,
                 mask_size: int, config: FastConfig = FastConfig(), version: int = 0, certified: bool = False,
                 style_layout: Sequence[dict] | None = None, full_rows: str = "here"):
        """``certified``: also write the certified engine's int8 style copy
        (:func:`~dermsearch.search.certified.write_certified`), so that ``--mode certified`` opens
        at once instead of building it (1 byte per style value: a quarter of the styles' size).
        ``style_layout``: the manifest's ``style_layers``; the Grams with weight 0 are checked to
        be 0 in every row written, and if they are, ``fast.json`` records the other columns as
        ``style_blocks`` (exact search then never reads the zeros).
        ``full_rows``: where the full float32 style rows stay (:mod:`.fast_rows`): ``here`` (this
        directory's ``styles.npy``), ``index`` (the index's table: the caller vouches that it holds
        these rows at ``version``), ``none``, or a directory or fsspec URL (a tier: the rows are
        written there). ``config.precision``: the re-rank rows' precision."""
        if not style_dim:
            raise ConfigError("fast mode needs style vectors (the index was built with style=False)")
        self.final = Path(directory)
        self.tmp = temp_dir_for(self.final)
        self.n, self.config, self.version, self.certified = n, config, version, certified
        self.precision = resolve_precision(config.precision, n)
        self.full_rows = full_rows or "here"
        if self.full_rows == "none" and self.precision == "float32":
            raise ConfigError("float32 re-rank rows are the full rows: they cannot be kept nowhere (full_rows='none')")
        self.mask_size = mask_size
        if mask_bytes and mask_size % config.mask_grid:
            raise ConfigError(f"mask_grid {config.mask_grid} must divide the mask size {mask_size}")

        def mm(name, dtype, shape):
            return np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)

        self._mm = mm
        self.features = mm("features", np.float32, (n, feature_dim))
        self.styles = mm("styles", np.float32, (n, style_dim))
        self.masks = mm("masks", np.uint8, (n, mask_bytes)) if mask_bytes else None
        self.mask_areas = mm("mask_areas", np.int32, (n,)) if mask_bytes else None
        self.ids = np.empty(n, dtype=object)
        self.rows: dict | None = None    # the rows' labels (see :meth:`set_rows`), written as rows.json
        self.style_layout = list(style_layout or [])
        self.dead = [r for r in dead_style_ranges(style_layout or []) if r[1] <= style_dim]

    def set_rows(self, identity: dict, paths, diagnosis, melanoma, lesion_id, meta_json) -> None:
        """The rows' labels, so that a reader needs no LanceDB to show hits (one list per column,
        in row order; melanoma NaN for unknown), and the identity of the index they belong to."""
        self.rows = {"identity": identity, "paths": [str(p) for p in paths], "diagnosis": list(diagnosis),
                     "melanoma": [None if np.isnan(v) else int(v) for v in melanoma],
                     "lesion_id": list(lesion_id), "meta_json": list(meta_json)}

    def write(self, start: int, ids: Sequence[str], features: np.ndarray, styles: np.ndarray,
              masks: np.ndarray | None = None, mask_areas: np.ndarray | None = None) -> None:
        stop = start + len(ids)
        self.ids[start:stop] = list(ids)
        self.features[start:stop] = features
        self.styles[start:stop] = styles
        if self.dead and not dead_columns_zero(styles, self.dead):
            self.dead = []                   # not zero after all: every column stays live
        if self.masks is not None:
            self.masks[start:stop] = masks
            self.mask_areas[start:stop] = mask_areas

    def finish(self, progress: Callable[[str], None] | None = None, chunk: int = 2048) -> FastIndex:
        cfg, n, say = self.config, self.n, progress or (lambda _m: None)
        t0 = time.perf_counter()
        rng = np.random.default_rng(cfg.seed)
        sample = np.sort(rng.choice(n, size=min(n, cfg.fit_rows), replace=False))
        info: dict = {"format": FAST_FORMAT, "rows": n, "index_version": self.version, "config": asdict(cfg),
                      "mask_size": self.mask_size}
        blocks = live_style_blocks(self.styles.shape[1], self.dead)
        if blocks is not None:
            info["style_blocks"] = [list(b) for b in blocks]
        for name, matrix, dims in (("feature", self.features, cfg.feature_dims),
                                   ("style", self.styles, cfg.style_dims)):
            self._project(name, matrix, dims, sample, info, chunk, say)
        if self.masks is not None:
            write_mask_cells(self._mm, self.masks, self.mask_size, cfg, info, chunk)
        half_sketches(self.tmp, cfg, info, say)
        for a in (self.features, self.styles, self.masks, self.mask_areas):
            if isinstance(a, np.memmap) and a.mode != "r":
                a.flush()
        from .certified import certified_groups, write_certified

        groups = certified_groups(self.styles.shape[1], self.style_layout, blocks)
        if self.certified:
            say("writing the int8 style copy for certified mode")
            write_certified(self.tmp, self.styles, groups)
        info["precision"] = self.precision
        if self.precision != "float32":
            say(f"writing the {self.precision} re-rank rows")
        write_compact_rows(self.tmp, self.styles, self.precision, groups)
        info["full_rows"] = self._place_full_rows(say)
        np.save(self.tmp / "ids.npy", np.array(self.ids.tolist(), dtype=str))
        if self.rows is not None:
            with open(self.tmp / "rows.json", "w") as f:
                json.dump({**self.rows, "rows": n}, f)
                f.flush()
                os.fsync(f.fileno())
        info["build_seconds"] = round(time.perf_counter() - t0, 1)
        with open(self.tmp / "fast.json", "w") as f:
            json.dump(info, f, indent=2)
            f.flush()
            os.fsync(f.fileno())
        replace_dir(self.tmp, self.final)   # atomic: the directory appears complete or not at all
        return FastIndex.open(self.final)

    def _place_full_rows(self, say: Callable[[str], None]) -> dict:
        """Keep the full style rows here, write them to a tier, or drop this directory's copy."""
        kind = self.full_rows if self.full_rows in ("here", "index", "none") else "tier"
        if kind == "here":
            return {"kind": "here", "location": None}
        location = None
        if kind == "tier":
            say(f"writing the full style rows to {self.full_rows}")
            location = write_tier_rows(self.full_rows, self.styles)
        path = Path(self.styles.filename)
        self.styles = None
        path.unlink()
        return {"kind": kind, "location": location}

    def _project(self, name: str, matrix: np.ndarray, dims: int, sample: np.ndarray, info: dict, chunk: int,
                 say: Callable[[str], None]) -> None:
        """Fit one matrix's PCA on the ``sample`` rows, then write every row's projection (and for
        the styles the count sketch of the residual), centred square norm, residual norm and square norm."""
        cfg, n = self.config, self.n
        say(f"fitting the {name} PCA on {sample.size} rows")
        mean, basis, explained = _fit_pca(np.asarray(matrix[sample]), dims, cfg.seed)
        info[f"{name}_explained_variance"] = round(explained, 5)
        np.save(self.tmp / f"{name}_mean.npy", mean)
        np.save(self.tmp / f"{name}_basis.npy", basis)
        proj = self._mm(f"{name}_proj", np.float32, (n, basis.shape[0]))
        m = min(cfg.sketch_dims, matrix.shape[1]) if name == "style" else 0
        if name == "style":
            info["config"]["sketch_dims"] = m           # what was stored (at most the style width)
        if m:
            order, signs = sketch_hash(matrix.shape[1], m, cfg.seed)
            sketch_basis = count_sketch(basis, order, signs, m)
            for suffix, v in (("order", order), ("signs", signs), ("basis", sketch_basis)):
                np.save(self.tmp / f"{name}_sketch_{suffix}.npy", v)
            sketch = self._mm(f"{name}_sketch", np.float32, (n, m))
        csq = self._mm(f"{name}_csq", np.float64, (n,))
        resid = self._mm(f"{name}_resid", np.float64, (n,))
        sq = self._mm(f"{name}_sqnorms", np.float64, (n,))
        say(f"projecting {n} {name} vectors")
        for s in range(0, n, chunk):
            block = np.asarray(matrix[s:s + chunk])
            centred = block - mean
            p = products(centred, basis) if centred.shape[0] > 1 else centred @ basis.T
            proj[s:s + chunk] = p
            if m:
                sketch[s:s + chunk] = count_sketch(centred, order, signs, m) - p @ sketch_basis
            c = np.einsum("ij,ij->i", centred, centred, dtype=np.float64)
            csq[s:s + chunk] = c
            resid[s:s + chunk] = np.sqrt(np.maximum(c - np.einsum("ij,ij->i", p, p, dtype=np.float64), 0.0))
            sq[s:s + chunk] = np.einsum("ij,ij->i", block, block, dtype=np.float64)
        for a in (proj, csq, resid, sq) + ((sketch,) if m else ()):
            a.flush()


def optimize(index, config: FastConfig = FastConfig(), progress: Callable[[str], None] | None = None,
             certified: bool = False) -> FastIndex:
    """Write the fast-mode files of ``index``'s current version (and drop older versions' files);
    with ``certified``, also the certified engine's int8 style copy.

    Reads the index's vectors once (as an exact :class:`~dermsearch.search.Searcher` does);
    :class:`FastIndexWriter` itself writes in chunks, for archives that are built elsewhere."""
    say = progress or (lambda _m: None)
    if certified:
        from .certified import _int_mm_is_exact

        if not _int_mm_is_exact():
            raise ConfigError("this torch build has no exact int8 product (torch._int_mm): certified mode "
                              "cannot use it, so no int8 copy is written")
    say("reading the index")
    s = index.snapshot()
    m = index.manifest
    if s.styles is None:
        raise ConfigError(f"{index.directory} stores no style vectors (built with style=False): fast mode "
                         "compresses the style vectors, exact search is already cheap without them")
    target = fast_dir(index.directory, s.version)
    previous = _full_rows_of(target.parent)
    w = FastIndexWriter(target, len(s), m["feature_dim"], m["style_dim"], m["mask_bytes"], m["mask_size"],
                        config, s.version, certified=certified, style_layout=m.get("style_layers"),
                        full_rows=config.full_rows or default_full_rows(config.precision, len(s)))
    w.set_rows(index_identity(m), s.paths, s.diagnosis, s.melanoma, s.lesion_id, s.meta_json)
    step = 4096
    for start in range(0, len(s), step):
        sl = slice(start, start + step)
        w.write(start, s.ids[sl], s.features[sl], s.styles[sl], None if s.masks is None else s.masks[sl],
                None if s.mask_areas is None else s.mask_areas[sl])
    fast = w.finish(say)
    for old in target.parent.iterdir():
        if old.name != target.name and not old.name.startswith(target.name + ".tmp"):
            shutil.rmtree(old, ignore_errors=True)
    still = _full_rows_of(target.parent)      # the new files' and those a reader's held version keeps
    for full in previous:
        if full not in still:
            remove_tier_rows(full)          # after the new files are in place
    return fast


def _full_rows_of(fast_root: Path) -> list[dict]:
    """The full-rows locations of the fast-mode directories under ``fast_root`` (tier files to
    delete once new files replace them)."""
    out = []
    for d in fast_root.glob("v*") if fast_root.is_dir() else ():
        try:
            full = json.loads((d / "fast.json").read_text()).get("full_rows")
        except (OSError, ValueError):
            continue
        if full and full.get("kind") == "tier" and full not in out:
            out.append(full)
    return out


def carry_forward(index, old_version: int) -> FastIndex | None:
    """After a compaction of ``index`` from ``old_version`` (the same rows in the same order, a new
    version), the fast-mode files of ``old_version`` made to serve the new one
    (:func:`~dermsearch.index.fastfiles.carry_forward_files`), opened; None when there is nothing to
    carry. :meth:`Index.compact <dermsearch.index.store.Index.compact>` does this itself."""
    from ..index.leases import held_versions

    target = carry_forward_files(index.directory, old_version, index.latest_version(),
                                 index.snapshot(vectors=False).ids, held_versions(index.directory))
    return None if target is None else FastIndex.open(target)
