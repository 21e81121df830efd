"""Shared helpers for benchmarks: where the real data lives, JSON output, directory sizes."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def require(path: Path) -> Path:
    if not path.exists():
        print(json.dumps({"skipped": f"{path} not found (see ../shared/data/README.md)"}))
        sys.exit(0)
    return path


def machine() -> dict:
    return {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__}


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def emit(result: dict) -> None:
    print(json.dumps(result, indent=1))
