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

from .errors import ConfigError
from .names import BACKENDS, PRECISIONS

__all__ = ["Runtime"]


@dataclass(frozen=True)
class Runtime:
    device: str = "auto"           # auto: CUDA when torch sees a GPU, else the CPU; or cpu, cuda, cuda:N
    threads: int | None = None     # intra-op threads of torch and ONNX Runtime (None: their default, the cores)
    backend: str = "auto"          # extraction: torch, onnx (ONNX Runtime), auto (see below)
    batch_size: int = 16           # images per forward pass when extracting (not a training batch)
    decode_threads: int = 2        # image-decoding threads that run ahead of inference when indexing
    precision: str = "auto"        # training's arithmetic: auto (bf16 autocast on CUDA, fp32 on the CPU), fp32, bf16

    # backend "auto": ONNX Runtime on the CPU when onnxruntime is installed. Building an index (or an
    # Extractor) exports the model once when needed; a Searcher encodes a query with an existing export,
    # else with torch (a one-off export is not worth it for a few images).

    def __post_init__(self) -> None:
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be at least 1 (or unset), not {self.threads}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, not {self.batch_size}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.decode_threads < 1:
            raise ConfigError(f"decode_threads must be at least 1, not {self.decode_threads}")

    def on_workers(self) -> Runtime:
        """The runtime of tasks shipped to other machines (Dask workers): ``auto`` means the CPU
        there, since this process cannot know what the workers have; a named device is kept."""
        return self if self.device != "auto" else replace(self, device="cpu")
