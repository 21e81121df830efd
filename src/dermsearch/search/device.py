"""The exact engine on torch tensors, on any torch device: a CUDA GPU when one is there.

The same arithmetic as :class:`~dermsearch.search.engine.ExactEngine` (float32 products, float64
after them, near-duplicates recomputed from their differences, Dice from bit counts: the functions of
:mod:`~dermsearch.search.measures`, which take numpy arrays or torch tensors), with the
index matrices resident on the device, so a query reads them at the device's memory bandwidth
(an H200 reads ~4.8 TB/s: all ten measures over 100k rows is ~33 GB). Ranking then runs on the
host over the [B, N] values (:func:`~dermsearch.search.engine.rank_rows`), exactly as for the
CPU engine. On ``device="cpu"`` it is a second implementation of the exact engine, which is how
the tests check it where there is no GPU.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError
from ..extract.vectors import Vectors
from .engine import ExhaustiveEngine, block_columns, outside_sqnorms
from .measures import cosines_from_dots, dice, distances_from_dots

__all__ = ["DeviceEngine", "popcount_table"]


def popcount_table(device):
    """[256] int32 tensor on ``device``: the number of set bits of every byte value (masks are
    bit-packed bytes; indexing this table with them counts pixels on any device)."""
    import torch

    return torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32, device=device)


class DeviceEngine(ExhaustiveEngine):
    """The engine contract on torch tensors resident on ``device`` (``cuda``, ``cuda:N``, ``cpu``)."""

    kernel = "torch-device"

    def __init__(self, vectors: Vectors, device: str = "cuda", style_blocks=None):
        """``style_blocks``: the style column ranges that may be non-zero
        (:attr:`ExactEngine.style_blocks <dermsearch.search.engine.ExactEngine.style_blocks>`, checked
        by the caller): only those go to the device, and a query's other columns count through
        their norm."""
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r}: torch sees no CUDA GPU here")

        def put(a, dtype):
            return None if a is None else torch.as_tensor(np.ascontiguousarray(a), dtype=dtype).to(device)
        self.style_blocks = None if vectors.styles is None or not style_blocks else tuple(
            (int(a), int(b)) for a, b in style_blocks)
        styles = vectors.styles if self.style_blocks is None else block_columns(vectors.styles, self.style_blocks)
        self._setup(put(vectors.features, torch.float32), put(styles, torch.float32),
                    put(vectors.masks, torch.uint8), put(vectors.mask_areas, torch.float64), vectors)

    @classmethod
    def from_tensors(cls, features, styles=None, masks=None, mask_areas=None, host: Vectors | None = None
                     ) -> DeviceEngine:
        """An engine over tensors already on their device (``host``: the same rows on the host, for
        :meth:`take`; None when there is no host copy)."""
        engine = cls.__new__(cls)
        engine.style_blocks = None
        engine._setup(features, styles, masks, None if mask_areas is None else mask_areas.double(), host)
        return engine

    def _setup(self, features, styles, masks, mask_areas, host) -> None:

        self.device = features.device
        self.host = host                                 # the stored rows, readable on the host
        self.features, self.styles, self.masks, self.mask_areas = features, styles, masks, mask_areas
        self.feature_sqnorms = self._sqnorms(features)
        self.style_sqnorms = None if styles is None else self._sqnorms(styles)
        self._popcount = popcount_table(self.device)

    def _sqnorms(self, X):
        import torch

        out = torch.empty(X.shape[0], dtype=torch.float64, device=self.device)
        for a in range(0, X.shape[0], 1024):
            out[a:a + 1024] = (X[a:a + 1024].double() ** 2).sum(1)
        return out

    def __len__(self) -> int:
        return self.features.shape[0]

    def take(self, rows) -> Vectors:
        import torch

        rows = np.asarray(rows, dtype=np.int64)
        if self.host is not None:
            return self.host.take(rows)
        idx = torch.as_tensor(rows, device=self.device)
        return Vectors(*(None if a is None else a[idx].cpu().numpy() for a in
                         (self.features, self.styles, self.masks, self.mask_areas)))

    # ------------------------------------------------------------------ raw values
    def _distances(self, Q, X, x_sq, extra_sq=None):
        """[B, N] float64 squared distances: the expansion, with near-duplicates recomputed.
        ``extra_sq`` [B]: each query's norm² over columns X does not hold (X is 0 there)."""
        import torch

        q = torch.as_tensor(np.ascontiguousarray(Q, dtype=np.float32), device=self.device)
        extra = torch.zeros(q.shape[0], dtype=torch.float64, device=self.device) if extra_sq is None else (
            torch.as_tensor(extra_sq, dtype=torch.float64, device=self.device))
        q_sq = (q.double() ** 2).sum(1) + extra
        dots = (q @ X.T).double() if q.shape[0] > 1 else torch.mv(X, q[0]).double()[None]
        return distances_from_dots(dots, q, X, q_sq, x_sq, extra), dots, q_sq

    def raw(self, batch: Vectors, components: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        import torch

        want = set(components or self.components)
        out = {}
        with torch.inference_mode():
            if want & {"euclidean", "cosine"}:
                d, dots, q_sq = self._distances(batch.features, self.features, self.feature_sqnorms)
                if "euclidean" in want:
                    out["euclidean"] = d.sqrt().cpu().numpy()
                if "cosine" in want:
                    out["cosine"] = cosines_from_dots(dots, q_sq, self.feature_sqnorms).cpu().numpy()
            if "style" in want and self.styles is not None and batch.styles is not None:
                S = np.asarray(batch.styles, dtype=np.float32)
                extra = None if self.style_blocks is None else outside_sqnorms(S, self.style_blocks)
                out["style"] = self._distances(block_columns(S, self.style_blocks), self.styles, self.style_sqnorms,
                                               extra)[0].cpu().numpy()
            if "dice" in want and self.masks is not None and batch.masks is not None:
                qm = torch.as_tensor(np.ascontiguousarray(batch.masks, dtype=np.uint8), device=self.device)
                inter = torch.stack([self._popcount[(self.masks & q).long()].sum(1) for q in qm]).double()
                areas = torch.as_tensor(np.asarray(batch.mask_areas, dtype=np.float64), device=self.device)
                out["dice"] = dice(inter, areas[:, None] + self.mask_areas[None, :]).cpu().numpy()
        return out
