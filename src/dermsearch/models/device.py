"""Device selection: ``auto`` takes CUDA when torch sees it, else the CPU."""

from __future__ import annotations

import torch

from ..errors import ConfigError

__all__ = ["resolve_device", "runtime_device"]


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):          # torch's message lists every device type it knows
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, not {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but torch sees no CUDA device; use device 'cpu' or 'auto'")
    return dev


def runtime_device(runtime=None) -> torch.device:
    """The device of a :class:`~dermsearch.runtime.Runtime` (default ``Runtime()``), after applying
    its thread count to torch."""
    from ..runtime import Runtime

    runtime = runtime or Runtime()
    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    return resolve_device(runtime.device)
