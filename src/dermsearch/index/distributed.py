"""Distributed extraction on Dask: the workers decode and extract, this process writes.

The same pipeline as a local build (:func:`~dermsearch.index.build.build`), with
:class:`DaskDistributor` as its distributor:

- reader: this process reads the source and leaves out ids the index already holds;
- mapper: chunks of records become Dask tasks, each a call of the (pickled) mapper. Each worker
  builds the extractor once (cached in the worker process by model settings), checks its
  fingerprint and returns the chunk's vectors and problems. Tasks have no side effects, so Dask
  may rerun one (``retries``, or a worker that died mid-task) freely;
- writer: this process, the index's one writer, commits results as they arrive (atomic commits
  every ``commit_every`` rows) and drops ids it has already written, so a rerun task can never
  add a row twice.

Workers need dermsearch installed (same version), the source images at the same paths, and custom
weight files at the same paths (a shared filesystem); the packaged weights travel with the package.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

from ..errors import require
from ..extract import ExtractorConfig
from ..runtime import Runtime
from .build import BuildReport, ExtractionMapper, Step, build, own_model
from .defaults import COMMIT_EVERY, DASK_CHUNK
from .records import Record
from .sources import Problem

__all__ = ["DaskDistributor", "build_index_dask"]


class DaskDistributor:
    """Runs the mapper on a Dask cluster's workers, ``chunk_size`` records per task, results in
    the order they complete. A chunk that fails every retry becomes one problem per record."""

    def __init__(self, client, chunk_size: int = DASK_CHUNK, retries: int = 3):
        require("distributed", "dask", "indexing on a Dask cluster")
        from distributed import Client

        self.client = client if isinstance(client, Client) else Client(client)
        self.chunk_size, self.retries = chunk_size, retries

    def run(self, mapper: ExtractionMapper, records: list[Record]) -> Iterator[Step]:
        from distributed import as_completed

        chunks = [records[i:i + self.chunk_size] for i in range(0, len(records), self.chunk_size)]
        futures = [self.client.submit(mapper, chunk, retries=self.retries, pure=False) for chunk in chunks]
        chunk_of = {f.key: c for f, c in zip(futures, chunks)}
        for future in as_completed(futures):
            try:
                yield future.result()
            except Exception as e:  # noqa: BLE001 - a chunk that failed every retry: report, go on
                reason = f"extraction failed on the cluster ({type(e).__name__}: {e})"
                yield chunk_of[future.key], [], [Problem(r.path, reason) for r in chunk_of[future.key]]
            future.release()


def build_index_dask(
    source: str | os.PathLike,
    directory: str | os.PathLike,
    client,
    extractor_config: ExtractorConfig | None = None,
    runtime: Runtime | None = None,
    commit_every: int = COMMIT_EVERY,
    chunk_size: int = DASK_CHUNK,
    retries: int = 3,
    on_problem: Callable[[Problem], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BuildReport:
    """:func:`~dermsearch.index.build.build_index` with extraction on the Dask ``client``'s workers.

    ``client``: a ``distributed.Client`` or a scheduler address. ``runtime``: how each task runs
    on its worker; its ``threads`` are torch/ONNX threads per task (default: the worker's cores /
    its Dask threads), and workers run on the CPU unless ``runtime.device`` names a device
    (:meth:`Runtime.on_workers`)."""
    distributor = DaskDistributor(client, chunk_size, retries)
    mapper = ExtractionMapper(own_model(directory, extractor_config), (runtime or Runtime()).on_workers())
    return build(source, directory, mapper, distributor, commit_every, on_problem, progress)
