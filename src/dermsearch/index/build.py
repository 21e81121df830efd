"""Index build as three stages: reader (sources) -> extractor -> writer (the store).

Decoding runs in a thread pool one batch ahead of inference. Rows are committed every
``commit_every`` images, each commit atomic; images already in the index are skipped, so a
crashed or interrupted run resumes where its last commit ended.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from ..extract import Extracted, Extractor, ExtractorConfig, ImageError, load_image
from .records import Record
from .sources import Problem, read_source
from .store import Index

__all__ = ["BuildConfig", "BuildReport", "BufferedWriter", "build_index", "decode_batches", "extract_batch",
           "model_settings"]


@dataclass(frozen=True)
class BuildConfig:
    batch_size: int = 16
    commit_every: int = 128
    decode_threads: int = 2
    device: str = "auto"          # where the networks run: auto (CUDA when torch sees it), cpu, cuda[:N]
    backend: str = "auto"         # torch, onnx (ONNX Runtime), auto: onnx on CPU when onnxruntime is installed


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
                  ) -> tuple[list[Record], Extracted | None, list[Problem]]:
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
        return records, (Extracted.concat(parts) if parts else None), problems


class BufferedWriter:
    """The writer stage: buffers extracted rows and commits every ``commit_every`` (each commit
    atomic). Rows whose id was already written by this writer are dropped, so a retried
    (distributed) task can never add a row twice."""

    def __init__(self, index: Index, commit_every: int, report: BuildReport):
        self.index, self.commit_every, self.report = index, commit_every, report
        self.records: list[Record] = []
        self.parts: list[Extracted] = []
        self.seen: set[str] = set()

    def add(self, records: list[Record], part: Extracted | None) -> None:
        if part is None or not records:
            return
        keep = [i for i, r in enumerate(records) if r.id not in self.seen]
        if len(keep) < len(records):
            records = [records[i] for i in keep]
            part = Extracted(*(None if a is None else a[keep] for a in
                               (part.features, part.styles, part.masks, part.mask_areas)))
        self.seen.update(r.id for r in records)
        self.records.extend(records)
        self.parts.append(part)
        if len(self.records) >= self.commit_every:
            self.flush()

    def flush(self) -> None:
        if self.records:
            self.report.added += self.index.add(self.records, Extracted.concat(self.parts))
            self.records.clear()
            self.parts.clear()


def pending(index: Index, records: list, report: BuildReport, commit_every: int) -> tuple[list, BufferedWriter]:
    """Inside ``index.writing()``: the records not in the index yet (counting the others in the
    report) and the writer that will add them."""
    existing = index.ids()
    todo = [r for r in records if r.id not in existing]
    report.already_indexed = len(records) - len(todo)
    return todo, BufferedWriter(index, commit_every, report)


def start_build(source, directory, extractor_config: ExtractorConfig | None,
                on_problem: Callable[[Problem], None] | None):
    """The reader stage and the model choice, shared by the local and the Dask build: returns the
    report, a problem callback (recording into it), the records, and the model settings (``None``:
    the existing index's own, else the default)."""
    report = BuildReport(index=Path(directory))

    def problem(p: Problem) -> None:
        report.problems.append(p)
        if on_problem:
            on_problem(p)

    records, source_problems = read_source(source)
    for p in source_problems:
        problem(p)
    report.found = len(records)
    if extractor_config is None:
        try:
            extractor_config = Index.open(directory).extractor_config
        except Exception:  # noqa: BLE001 - no index yet: the default model
            extractor_config = ExtractorConfig()
    return report, problem, records, extractor_config


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


def build_index(
    source: str | os.PathLike,
    directory: str | os.PathLike,
    extractor_config: ExtractorConfig | None = None,
    config: BuildConfig = BuildConfig(),
    on_problem: Callable[[Problem], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
    extractor: Extractor | None = None,
) -> BuildReport:
    """Index ``source`` (a folder or labels CSV) into ``directory``; add only what is new.

    ``extractor_config``: the model for a new index; for an existing index, ``None`` means
    "the index's own model", and a different model is a :class:`ModelMismatchError`.
    ``progress(done, total)`` is called after each batch.
    """
    t0 = time.perf_counter()
    report, problem, records, extractor_config = start_build(source, directory, extractor_config, on_problem)
    if extractor is None:
        extractor = Extractor(extractor_config, device=config.device, backend=config.backend)
    index = Index.open_or_create(directory, extractor)
    with index.writing():
        todo, writer = pending(index, records, report, config.commit_every)
        done = 0
        for batch in decode_batches(todo, config.batch_size, config.decode_threads, extractor.prepare):
            good, part, problems = extract_batch(extractor, batch)
            for p in problems:
                problem(p)
            writer.add(good, part)
            done += len(batch)
            if progress:
                progress(done, len(todo))
        writer.flush()
    report.seconds = time.perf_counter() - t0
    return report
