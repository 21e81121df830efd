"""Where and how work runs, apart from what it computes.

A :class:`Runtime` says which device the networks run on, with how many threads, through which
inference backend and in batches of what size. None of it changes a result beyond float rounding,
so none of it enters a model fingerprint, an index manifest or a training run's resume key: an
index built on a GPU is searched on a CPU, and a run started with ``device="cuda"`` resumes with
``device="cpu"``. Every entry point takes one (``Extractor``, ``build_index``, ``Searcher``, the
trainers, ``evaluate_classifier``) and they share one default policy: ``Runtime()``.

This module imports no network library.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from ..errors import ConfigError
from ..names import BACKENDS, DEVICE_HELP, PRECISIONS
from .fields import check_fields, choice, setting

__all__ = ["Runtime"]


@dataclass(frozen=True)
class Runtime:
    device: str = setting("auto", DEVICE_HELP)
    threads: int | None = setting(None, "threads for torch and ONNX Runtime (default: the cores)", min=1,
                                  max=1024, metavar="N")
    backend: Literal[*BACKENDS] = choice(
        BACKENDS, "auto", "run the networks with torch or ONNX Runtime (exported once to ~/.cache/dermsearch; same "
        "vectors to float32 rounding, ~3x faster on CPU); auto: onnx on CPU when the model is exported or the [onnx] "
        "extra can export it")
    batch_size: int = setting(16, "images per forward pass when extracting (not a training batch)", min=1)
    decode_threads: int = setting(2, "image-decoding threads that run ahead of inference when indexing", min=1)
    precision: Literal[*PRECISIONS] = choice(
        PRECISIONS, "auto", "arithmetic of the training steps: auto (bf16 autocast on CUDA, fp32 on the CPU), fp32, "
        "or bf16 (autocast on either; on CPUs with AMX or AVX512-BF16 whole members train ~2.5x faster). Not part "
        "of what a run computes: a run resumes under another precision")

    # backend "auto": ONNX Runtime on the CPU when onnxruntime is installed. Building an index (or an
    # Extractor) exports the model once when needed; a Searcher encodes a query with an existing export,
    # else with torch (a one-off export is not worth it for a few images).

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        check_fields(self)

    def on_workers(self) -> Runtime:
        """The runtime of tasks shipped to other machines (Dask workers): ``auto`` means the CPU
        there, since this process cannot know what the workers have; a named device is kept."""
        return self if self.device != "auto" else replace(self, device="cpu")
