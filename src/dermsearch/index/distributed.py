"""Distributed extraction on Dask: the workers decode and extract, this process writes.

The same three stages as :func:`~dermsearch.index.build.build_index`, spread out:

- reader: this process reads the source and leaves out ids the index already holds;
- extractor: chunks of records become Dask tasks. Each worker builds the extractor once (cached
  in the worker process by model settings) and returns the chunk's vectors and problems. Tasks
  have no side effects, so Dask may rerun one (``retries``, or a worker that died mid-task) freely;
- writer: this process, the index's one writer, commits results as they arrive (atomic commits
  every ``commit_every`` rows) and drops ids it has already written, so a rerun task can never
  add a row twice.

Workers need dermsearch installed (same version), the source images at the same paths, and custom
weight files at the same paths (a shared filesystem); the packaged weights travel with the package.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable

from ..errors import require
from ..extract import Extractor, ExtractorConfig
from .build import BuildConfig, BuildReport, _decode, extract_batch, pending, start_build
from .records import Record
from .sources import Problem
from .store import Index, ModelMismatchError

__all__ = ["build_index_dask", "extract_chunk"]

_EXTRACTORS: dict[str, Extractor] = {}     # per worker process: the models are loaded once


def _worker_extractor(config: dict, device: str, backend: str, threads: int | None) -> Extractor:
    key = json.dumps([config, device, backend, threads], sort_keys=True)
    ex = _EXTRACTORS.get(key)
    if ex is None:
        ex = _EXTRACTORS[key] = Extractor(ExtractorConfig.from_dict(config), threads=threads, device=device,
                                          backend=backend)
    return ex


def extract_chunk(records: list[Record], config: dict, fingerprint: str, device: str = "cpu",
                  backend: str = "auto", batch_size: int = 16, threads: int | None = None):
    """One task: decode and extract ``records`` on this worker. Returns
    ``[(records, Extracted | None), ...], problems``; raises if the worker's model differs."""
    ex = _worker_extractor(config, device, backend, threads)
    if ex.fingerprint != fingerprint:
        raise ModelMismatchError(f"worker {os.uname().nodename} (pid {os.getpid()}) computes model "
                                 f"{ex.fingerprint}, the index holds {fingerprint}: install the same "
                                 "dermsearch and weights on every worker")
    _fault_injection_hook(records)
    out, problems = [], []
    for start in range(0, len(records), batch_size):
        batch = [_decode(r, ex.prepare) for r in records[start:start + batch_size]]
        good, part, bad = extract_batch(ex, batch)
        problems.extend(bad)
        out.append((good, part))
    return out, problems


def _fault_injection_hook(records: list[Record]) -> None:
    """Tests only: ``DERMSEARCH_TEST_KILL_WORKER=MARKER_FILE`` kills the worker process (as a crash
    would) the first time any worker runs a chunk, leaving MARKER_FILE so the retry succeeds."""
    marker = os.environ.get("DERMSEARCH_TEST_KILL_WORKER")
    if marker and records:
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
        os._exit(1)


def build_index_dask(
    source: str | os.PathLike,
    directory: str | os.PathLike,
    client,
    extractor_config: ExtractorConfig | None = None,
    config: BuildConfig = BuildConfig(),
    chunk_size: int = 64,
    retries: int = 3,
    worker_threads: int | None = None,
    on_problem: Callable[[Problem], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BuildReport:
    """:func:`~dermsearch.index.build.build_index` with extraction on the Dask ``client``'s workers.

    ``client``: a ``distributed.Client`` or a scheduler address. ``worker_threads``: torch/ONNX
    threads per task (default: the worker's cores / its Dask threads)."""
    require("distributed", "dask", "indexing on a Dask cluster")
    from distributed import Client, as_completed

    if not isinstance(client, Client):
        client = Client(client)
    t0 = time.perf_counter()
    report, problem, records, extractor_config = start_build(source, directory, extractor_config, on_problem)
    # the client builds the model once too: it fingerprints it and creates the index
    local = Extractor(extractor_config)
    index = Index.open_or_create(directory, local)
    with index.writing():
        todo, writer = pending(index, records, report, config.commit_every)
        chunks = [todo[i:i + chunk_size] for i in range(0, len(todo), chunk_size)]
        cfg = local.config.to_dict()
        device = config.device if config.device != "auto" else "cpu"
        futures = [client.submit(extract_chunk, chunk, cfg, local.fingerprint, device, config.backend,
                                 config.batch_size, worker_threads, retries=retries, pure=False)
                   for chunk in chunks]
        size = {f.key: len(c) for f, c in zip(futures, chunks)}
        done = 0
        for future in as_completed(futures):
            try:
                parts, problems = future.result()
            except Exception as e:  # noqa: BLE001 - a chunk that failed every retry: report, go on
                chunk = chunks[futures.index(future)]
                for r in chunk:
                    problem(Problem(r.path, f"extraction failed on the cluster ({type(e).__name__}: {e})"))
            else:
                for p in problems:
                    problem(p)
                for good, part in parts:
                    writer.add(good, part)
            done += size[future.key]
            future.release()
            if progress:
                progress(done, len(todo))
        writer.flush()
    report.seconds = time.perf_counter() - t0
    return report
