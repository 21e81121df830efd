"""One resumable epoch loop for every trainer (segmenter, ensemble members, ensemble phase two).

A :class:`Run` names what a loop trains (model, optimiser, schedule), where its files go
(:class:`RunFiles`: ``best``/``last`` weights, optimiser tensors, ``state.json``), the settings it
resumes against (its *resume key*: the config without runtime fields such as the device) and how
many epochs it runs. :func:`fit` drives it: it resumes after the last saved epoch when the key
matches (and starts afresh, saying so, when it does not), runs ``train_epoch`` and ``validate``
for each remaining epoch, keeps the best checkpoint by the validation score, and writes every
file atomically (:mod:`dermsearch.io`: temporary name, flushed, then renamed), so an interruption at
any point leaves a run that resumes. A state written before the harness (no resume key) is refused
with the command that converts it (:mod:`.migrate`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import ConfigError, DermsearchError
from ..io import atomic_path, write_json
from ..models.weights import save_checkpoint
from ..names import PRECISIONS

__all__ = ["RUNTIME_FIELDS", "resume_key", "atomic_json", "atomic_safetensors", "RunFiles", "Run", "WeightAverage",
           "fit", "iterate", "autocast", "resolved_precision", "dump_optimizer", "load_optimizer", "machine"]

RUNTIME_FIELDS = ("device", "precision")   # how a run executes, not what it computes: never part of a resume key


def resume_key(config: dict, ignore: tuple[str, ...] = ()) -> dict:
    """The settings a run's saved state depends on: ``config`` without runtime fields and ``ignore``."""
    return {k: v for k, v in config.items() if k not in RUNTIME_FIELDS + tuple(ignore)}


def atomic_json(path: Path, obj) -> None:
    write_json(path, obj, indent=1)


def dump_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimiser's state as safetensors-storable tensors plus JSON metadata."""
    sd = opt.state_dict()
    tensors, meta = {}, {"param_groups": sd["param_groups"], "state": {}}
    for pid, st in sd["state"].items():
        meta["state"][str(pid)] = {}
        for key, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pid}.{key}"] = v.detach().cpu().contiguous()
                meta["state"][str(pid)][key] = "tensor"
            else:
                meta["state"][str(pid)][key] = v
    return tensors, meta


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state = {}
    for pid, st in meta["state"].items():
        state[int(pid)] = {k: tensors[f"{pid}.{k}"] if v == "tensor" else v for k, v in st.items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass(frozen=True)
class RunFiles:
    """Where one loop keeps its state: ``directory/{prefix}best.safetensors`` and so on."""
    directory: Path
    prefix: str = ""

    def _p(self, name: str) -> Path:
        return Path(self.directory) / f"{self.prefix}{name}"

    @property
    def best(self) -> Path:
        return self._p("best.safetensors")

    @property
    def last(self) -> Path:
        return self._p("last.safetensors")

    @property
    def optimizer(self) -> Path:
        return self._p("optimizer.safetensors")

    @property
    def state(self) -> Path:
        return self._p("state.json")

    @property
    def average(self) -> Path:
        return self._p("average.safetensors")


class WeightAverage:
    """An exponential moving average of modules' weights: parameters and floating-point buffers are
    averaged, integer buffers (BatchNorm's batch counts) copied. The trainer calls :meth:`update` after
    each optimiser step. With ``warmup`` the decay of the t-th update is ``min(decay, (1 + t) / (10 + t))``,
    so a run of a few hundred steps is not dominated by its initial weights; without it, ``decay``
    from the first step."""

    def __init__(self, modules: list[nn.Module], decay: float, warmup: bool = False):
        if not 0 < decay < 1:
            raise ConfigError(f"a weight average's decay must be in (0, 1), not {decay}")
        self.modules, self.decay, self.warmup, self.updates = modules, decay, warmup, 0
        self.shadow = [{n: t.detach().clone() for n, t in m.state_dict().items()} for m in modules]

    def current_decay(self) -> float:
        """The decay the next update uses."""
        t = self.updates + 1
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        d = self.current_decay()
        for m, sh in zip(self.modules, self.shadow):
            for n, t in m.state_dict().items():
                if t.dtype.is_floating_point:
                    sh[n].mul_(d).add_(t.detach(), alpha=1 - d)
                else:
                    sh[n].copy_(t)
        self.updates += 1

    def swap(self) -> None:
        """Exchange the live weights and the average (call twice to restore)."""
        for m, sh in zip(self.modules, self.shadow):
            live = {n: t.detach().clone() for n, t in m.state_dict().items()}
            m.load_state_dict(sh)
            sh.clear()
            sh.update(live)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The average as a flat, safetensors-storable dict (see :meth:`load`)."""
        return {f"{i}.{n}": t.detach().cpu().contiguous() for i, sh in enumerate(self.shadow) for n, t in sh.items()}

    def load(self, tensors: dict[str, torch.Tensor], updates: int) -> None:
        want = {f"{i}.{n}" for i, sh in enumerate(self.shadow) for n in sh}
        if set(tensors) != want:
            raise ConfigError(f"the saved weight average has other tensors than these modules "
                             f"(missing {sorted(want - set(tensors))[:3]}, extra {sorted(set(tensors) - want)[:3]})")
        for i, sh in enumerate(self.shadow):
            for n in sh:
                sh[n].copy_(tensors[f"{i}.{n}"])
        self.updates = updates


@dataclass
class Run:
    """One resumable training loop (see the module docstring)."""
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    files: RunFiles
    key: dict
    epochs: int
    name: str = ""                                            # log prefix, e.g. "member 2"
    log: Callable[[str], None] = print
    best_metadata: Callable[[dict], dict] = field(default=lambda rec: {})   # safetensors metadata of "best"
    last_metadata: dict = field(default_factory=dict)
    after_epoch: Callable[[dict], None] | None = None  # called with the state after each saved epoch
    average: WeightAverage | None = None   # a moving average of ``model``'s weights (updated by the trainer):
                                           # what is validated and kept as "best"; saved with every epoch
    record: dict = field(default_factory=dict)   # added to each epoch's history record (e.g. its precision)


def load_metadata(path: Path) -> dict:
    with safe_open(str(path), framework="pt") as fh:
        return fh.metadata() or {}


def _read_state(run: Run) -> dict | None:
    f = run.files
    if not (f.state.is_file() and f.last.is_file() and f.optimizer.is_file()):
        return None
    state = json.loads(f.state.read_text())
    if "key" not in state and "config" in state:   # written before the harness: its settings under "config"
        raise DermsearchError(f"{f.state}: the state of a run started before resumable training (no resume key); "
                              f"convert it with 'python -m dermsearch.train.migrate {f.state}' to resume it, or "
                              "delete it to train afresh")
    saved = load_metadata(f.last).get("epoch")
    unfinished = saved is not None and int(saved) != state["epoch"]
    finished = state["epoch"] + 1 >= run.epochs and f.best.is_file()   # its average no longer matters
    if run.average is not None and not finished:   # the average is saved after the last weights, before the state
        unfinished = unfinished or not f.average.is_file() or \
            load_metadata(f.average).get("epoch") != str(state["epoch"])
    if state.get("key") != run.key or unfinished:
        why = "another config" if state.get("key") != run.key else "an unfinished epoch"
        run.log(f"{run.name + ': ' if run.name else ''}a run with {why} stopped here; starting afresh")
        for path in (f.best, f.last, f.optimizer, f.state, f.average):   # nothing of it may pass for this run's
            path.unlink(missing_ok=True)
        return None
    return state


def atomic_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict | None = None) -> None:
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata)


def _restore(run: Run, state: dict) -> None:
    """Put the model, optimizer, scheduler, weight average and torch RNGs back as ``state`` left them."""
    f = run.files
    run.model.load_state_dict(load_file(str(f.last)), strict=True)
    load_optimizer(run.optimizer, load_file(str(f.optimizer)), state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.average is not None:
        run.average.load(load_file(str(f.average)), int(load_metadata(f.average)["updates"]))
    if "rng" in state:
        torch.set_rng_state(torch.tensor(state["rng"], dtype=torch.uint8))
    if state.get("cuda_rng") and torch.cuda.is_available() and len(state["cuda_rng"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([torch.tensor(r, dtype=torch.uint8) for r in state["cuda_rng"]])


def fit(run: Run, train_epoch: Callable[[int], float], validate: Callable[[], tuple[dict, float]],
        describe: Callable[[dict, bool], str]) -> dict:
    """Train ``run`` to its last epoch; returns its state (``epoch``, ``best``, ``history``).

    ``train_epoch(epoch)`` trains one epoch and returns its mean training loss; ``validate()``
    returns (metrics, score), higher score better; ``describe(record, improved)`` is the log line."""
    f = run.files
    f.directory.mkdir(parents=True, exist_ok=True)
    state = _read_state(run)
    start, best, history = 0, -math.inf, []
    if state is not None:
        if state["epoch"] + 1 >= run.epochs and f.best.is_file():
            run.log(f"{run.name + ': ' if run.name else ''}done earlier (best val {state['best']:.4f})")
            return state
        _restore(run, state)
        start, best, history = state["epoch"] + 1, state["best"], state["history"]
        run.log(f"{run.name + ': ' if run.name else ''}resuming after epoch {start} (best val {best:.4f})")
    for epoch in range(start, run.epochs):
        t0 = time.perf_counter()
        train_loss = train_epoch(epoch)
        if run.average is not None:   # validated and kept as "best": the average; saved as "last": the live weights
            run.average.swap()
        metrics, score = validate()
        rec = {"epoch": epoch + 1, "train_loss": train_loss, **{f"val_{k}": v for k, v in metrics.items()},
               **run.record, "seconds": time.perf_counter() - t0}
        history.append(rec)
        score = -math.inf if math.isnan(score) else score
        improved = not f.best.is_file() or score > best
        if improved:
            best = score
            save_checkpoint(run.model, f.best, run.best_metadata(rec))
        if run.average is not None:
            run.average.swap()
        save_checkpoint(run.model, f.last, {**run.last_metadata, "epoch": str(epoch)})
        tensors, meta = dump_optimizer(run.optimizer)
        atomic_safetensors(f.optimizer, tensors)
        if run.average is not None:
            atomic_safetensors(f.average, run.average.tensors(),
                               {"epoch": str(epoch), "updates": str(run.average.updates)})
        state = {"key": run.key, "epoch": epoch, "best": best, "history": history, "optimizer": meta,
                 "scheduler": run.scheduler.state_dict(), "rng": torch.get_rng_state().tolist(),
                 # dropout on a GPU draws from its own generators (bf16 kernels may still differ after a resume)
                 "cuda_rng": [r.tolist() for r in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else []}
        atomic_json(f.state, state)
        if run.after_epoch is not None:
            run.after_epoch(state)
        run.log(describe(rec, improved))
    if state is None:
        raise ConfigError(f"{f.state}: no epochs to run (epochs = {run.epochs}); set epochs above 0")
    return state


def optimise(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler, average: WeightAverage | None) -> float:
    """One training step on ``loss``: gradients, the optimizer and scheduler steps, the weight
    average's update; returns the loss as a float (both phases' inner loops)."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    if average is not None:
        average.update()
    return float(loss.detach())


def iterate(n: int, step: int, desc: str, progress: bool):
    """Batch starts 0, step, ... < n, with a progress bar when ``progress``."""
    batches = range(0, n, step)
    if not progress:
        return batches
    from rich.console import Console
    from rich.progress import track

    return track(batches, description=desc, transient=True, console=Console(stderr=True))  # stdout: results


def autocast(device: torch.device, precision: str = "auto"):
    """Training's mixed precision (``Runtime.precision``): ``auto`` is bfloat16 autocast on CUDA (no loss
    scaling needed) and nothing on the CPU; ``bf16`` is bfloat16 autocast on either (worth it on CPUs
    with AMX or AVX512-BF16, much slower elsewhere); ``fp32`` is nothing on either."""
    import contextlib

    kind = torch.device(device).type
    if resolved_precision(device, precision) == "bf16":
        return torch.autocast(kind, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolved_precision(device: torch.device, precision: str = "auto") -> str:
    """``bf16`` or ``fp32``: what ``precision`` means on ``device``."""
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be {', '.join(PRECISIONS[:-1])} or {PRECISIONS[-1]}, not {precision!r}")
    return precision


def machine(device: torch.device, precision: str = "auto") -> dict:
    """Which machine made a run's weights: device, processor or GPU model, thread count, torch version,
    and the arithmetic of its training steps."""
    import os
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"device": str(device), "cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
           "precision": resolved_precision(device, precision)}
    if torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
    return out
