"""Index build as three stages: reader (sources) -> mapper (extraction) -> writer (the store).

:func:`build` is the one pipeline; where the mapper runs is the distributor's choice (this
process, or Dask workers: :mod:`dermsearch.index.distributed`). Locally, decoding runs in a
thread pool one batch ahead of inference. Rows are committed every
``commit_every`` images, each commit atomic; images already in the index are skipped, so a
crashed or interrupted run resumes where its last commit ended.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..extract import Extractor, ExtractorConfig, ImageError, Vectors, load_image
from ..runtime import Runtime
from .defaults import COMMIT_EVERY
from .records import IndexSchema, Record
from .sources import Problem, read_source
from .store import Index, IndexDirectoryError, ModelMismatchError

__all__ = ["BuildReport", "BufferedWriter", "ExtractionMapper", "LocalDistributor", "build",
           "build_index", "decode_batches", "extract_batch", "model_settings", "own_model"]


@dataclass
class BuildReport:
    index: Path
    found: int = 0
    added: int = 0
    already_indexed: int = 0
    problems: list[Problem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return self.added / self.seconds if self.seconds > 0 else 0.0


def _decode(record: Record, prepare: Callable | None = None) -> tuple[Record, object | None, str | None]:
    try:
        image = load_image(record.path)
        return record, (image if prepare is None else prepare(image)), None
    except ImageError as e:
        return record, None, str(e)
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the batch
        return record, None, f"unreadable ({type(e).__name__}: {e})"


def decode_batches(records: Sequence[Record], batch_size: int, threads: int, prepare: Callable | None = None
                   ) -> Iterator[list[tuple[Record, object | None, str | None]]]:
    """Yield decoded batches, decoding (and, with ``prepare``, resizing) batch i+1 and i+2 in
    threads while the caller runs inference on batch i."""
    batches = [records[i:i + batch_size] for i in range(0, len(records), batch_size)]
    if not batches:
        return
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        ahead = 2
        pending: list[list[Future]] = [[pool.submit(_decode, r, prepare) for r in b] for b in batches[:ahead]]
        for i in range(len(batches)):
            current = [f.result() for f in pending.pop(0)]
            if i + ahead < len(batches):
                pending.append([pool.submit(_decode, r, prepare) for r in batches[i + ahead]])
            yield current


def extract_batch(extractor: Extractor, batch: list[tuple[Record, object | None, str | None]]
                  ) -> tuple[list[Record], Vectors | None, list[Problem]]:
    """The extractor stage for one decoded batch: (records extracted, their vectors, problems).
    A batch that fails is retried image by image, so one bad image never costs the others."""
    problems, good = [], []
    for record, image, error in batch:
        if error is not None:
            problems.append(Problem(record.path, error))
        else:
            good.append((record, image))
    if not good:
        return [], None, problems
    try:
        return [r for r, _ in good], extractor.extract_prepared([img for _, img in good]), problems
    except Exception:  # noqa: BLE001 - isolate the image that breaks the batch
        records, parts = [], []
        for record, image in good:
            try:
                parts.append(extractor.extract_prepared([image]))
                records.append(record)
            except Exception as e:  # noqa: BLE001
                problems.append(Problem(record.path, f"extraction failed ({type(e).__name__}: {e})"))
        return records, (Vectors.concat(parts) if parts else None), problems


class BufferedWriter:
    """The writer stage: buffers extracted rows and commits every ``commit_every`` (each commit
    atomic). Rows whose id was already written by this writer are dropped, so a retried
    (distributed) task can never add a row twice."""

    def __init__(self, index: Index, commit_every: int, report: BuildReport):
        self.index, self.commit_every, self.report = index, commit_every, report
        self.records: list[Record] = []
        self.parts: list[Vectors] = []
        self.seen: set[str] = set()

    def add(self, records: list[Record], part: Vectors | None) -> None:
        if part is None or not records:
            return
        keep = [i for i, r in enumerate(records) if r.id not in self.seen]
        if len(keep) < len(records):
            records = [records[i] for i in keep]
            part = part.take(keep)
        self.seen.update(r.id for r in records)
        self.records.extend(records)
        self.parts.append(part)
        if len(self.records) >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        if self.records:
            self.report.added += self.index.add(self.records, Vectors.concat(self.parts))
            self.records.clear()
            self.parts.clear()


def model_settings(directory: str | os.PathLike, settings: dict) -> tuple[ExtractorConfig | None, list[str]]:
    """The model to index ``directory`` with, from explicit ``settings`` (ExtractorConfig fields),
    and notes for the user. An existing index keeps its own model: the settings must agree with it
    (``None`` when there are none; the build checks the fingerprint). A new index gets
    :meth:`ExtractorConfig.for_weights`. Without masks, style uses the paper's whole-image Grams
    unless a pooling is given (lesion-aware Grams pool over the masks)."""
    from ..extract.extractor import PAPER_STYLE

    notes = []
    if settings.get("masks") is False and settings.get("style") is not False and "gram_pool" not in settings:
        settings = {**{k: v for k, v in PAPER_STYLE.items() if k not in settings}, **settings}
        notes.append("no masks: style uses the paper's whole-image Gram matrices")
    if (Path(directory) / "dermsearch.json").exists():
        stored = Index.open(directory).manifest["extractor"]
        return (ExtractorConfig.from_dict({**stored, **settings}) if settings else None), notes
    settings = dict(settings)
    return ExtractorConfig.for_weights(settings.pop("weights", "default"), **settings), notes


Step = tuple[list[Record], list[tuple[list[Record], Vectors | None]], list[Problem]]
"""What a distributor yields per unit of work: the records it covers, their extracted parts
(records, vectors), and the problems found on the way."""


_EXTRACTORS: dict[str, Extractor] = {}     # per worker process: each model is loaded once for all its tasks


class ExtractionMapper:
    """The mapper stage: records -> vectors with one model. Picklable (it carries the model's
    settings, not the networks), so a distributor can ship it to other processes, where the
    extractor is built once per process and checked against the index's fingerprint.

    ``runtime``: where and how the model runs (device, threads, backend, batch size, decode threads).
    ``extractor``: an already-built model to use in this process (local builds)."""

    def __init__(self, config: ExtractorConfig, runtime: Runtime | None = None, extractor: Extractor | None = None):
        self.config, self.runtime = config, runtime or Runtime()
        self._local = extractor
        self.fingerprint: str | None = None if extractor is None else extractor.fingerprint

    @classmethod
    def of(cls, extractor: Extractor, runtime: Runtime | None = None) -> ExtractionMapper:
        """A mapper with an already-built model; ``runtime``'s batch size and decode threads apply
        (default: the extractor's own runtime)."""
        return cls(extractor.config, runtime or extractor.runtime, extractor=extractor)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_local"] = None            # the networks never travel: a worker builds its own
        state["_shipped"] = True          # ... once per process, for all the tasks it runs
        return state

    @property
    def extractor(self) -> Extractor:
        if self._local is None:
            if getattr(self, "_shipped", False):     # a task on a worker: reuse the process's model
                key = json.dumps([self.config.to_dict(), asdict(self.runtime)], sort_keys=True)
                if key not in _EXTRACTORS:
                    _EXTRACTORS[key] = Extractor(self.config, self.runtime)
                self._local = _EXTRACTORS[key]
            else:                                      # this process: the files as they are now
                self._local = Extractor(self.config, self.runtime)
            if self.fingerprint is not None and self._local.fingerprint != self.fingerprint:
                raise ModelMismatchError(f"{os.uname().nodename} (pid {os.getpid()}) computes model "
                                         f"{self._local.fingerprint}, the index holds {self.fingerprint}: install "
                                         "the same dermsearch and weights everywhere")
        return self._local

    def schema(self) -> IndexSchema:
        """The index schema of this mapper's vectors (builds the model here, once)."""
        self.fingerprint = self.extractor.fingerprint
        return IndexSchema.of(self.extractor)

    def __call__(self, records: list[Record]) -> Step:
        """One unit of work: decode and extract ``records`` in batches (a distributed task)."""
        ex, parts, problems = self.extractor, [], []
        for start in range(0, len(records), self.runtime.batch_size):
            batch = [_decode(r, ex.prepare) for r in records[start:start + self.runtime.batch_size]]
            good, part, bad = extract_batch(ex, batch)
            problems.extend(bad)
            parts.append((good, part))
        return records, parts, problems

    def stream(self, records: list[Record]) -> Iterator[Step]:
        """All ``records`` in this process, decoding one batch ahead of inference in threads."""
        ex = self.extractor
        for batch in decode_batches(records, self.runtime.batch_size, self.runtime.decode_threads, ex.prepare):
            good, part, problems = extract_batch(ex, batch)
            yield [r for r, _, _ in batch], [(good, part)], problems


class LocalDistributor:
    """Runs the mapper in this process (decode threads ahead of inference)."""

    def run(self, mapper: ExtractionMapper, records: list[Record]) -> Iterator[Step]:
        yield from mapper.stream(records)


def build(source, directory: str | os.PathLike, mapper: ExtractionMapper, distributor=None,
          commit_every: int = COMMIT_EVERY, on_problem: Callable[[Problem], None] | None = None,
          progress: Callable[[int, int], None] | None = None) -> BuildReport:
    """Index ``source`` (a folder or labels CSV) into ``directory``: reader -> mapper -> writer.

    The reader lists the source's records; the index is created with the mapper's schema (or an
    existing one checked against it); the records not in the index yet go to ``distributor``
    (:class:`LocalDistributor` by default, or
    :class:`~dermsearch.index.distributed.DaskDistributor`), which runs the mapper on them and
    yields results in any order; this process, the index's one writer, commits them every
    ``commit_every`` rows (each commit atomic), so a crashed or interrupted run resumes where its
    last commit ended. ``progress(done, total)`` is called after each step."""
    t0 = time.perf_counter()
    report = BuildReport(index=Path(directory))

    def problem(p: Problem) -> None:
        report.problems.append(p)
        if on_problem:
            on_problem(p)

    records, source_problems = read_source(source)
    for p in source_problems:
        problem(p)
    report.found = len(records)
    index = Index.open_or_create(directory, mapper.schema())
    with index.writing():
        existing = index.ids()
        todo = [r for r in records if r.id not in existing]
        report.already_indexed = len(records) - len(todo)
        writer = BufferedWriter(index, commit_every, report)
        done = 0
        for covered, parts, problems in (distributor or LocalDistributor()).run(mapper, todo):
            for p in problems:
                problem(p)
            for good, part in parts:
                writer.add(good, part)
            done += len(covered)
            if progress:
                progress(done, len(todo))
        writer.flush()
    report.seconds = time.perf_counter() - t0
    return report


def build_index(
    source: str | os.PathLike,
    directory: str | os.PathLike,
    extractor_config: ExtractorConfig | None = None,
    runtime: Runtime | None = None,
    commit_every: int = COMMIT_EVERY,
    on_problem: Callable[[Problem], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    extractor: Extractor | None = None,
) -> BuildReport:
    """:func:`build` in this process with the model ``extractor`` or ``extractor_config``.

    ``extractor_config``: the model for a new index; for an existing index, ``None`` means
    "the index's own model", and a different model is a :class:`ModelMismatchError`.
    ``runtime``: where and how it runs (default ``Runtime()``; with ``extractor``, its own)."""
    if extractor is not None:
        mapper = ExtractionMapper.of(extractor, runtime)
    else:
        mapper = ExtractionMapper(own_model(directory, extractor_config), runtime)
    return build(source, directory, mapper, LocalDistributor(), commit_every, on_problem, progress)


def own_model(directory: str | os.PathLike, config: ExtractorConfig | None) -> ExtractorConfig:
    """``config``, or for ``None`` the existing index's own model (the default for a new one)."""
    if config is not None:
        return config
    try:
        return Index.open(directory).extractor_config
    except IndexDirectoryError:      # no index yet: the default model
        return ExtractorConfig()
