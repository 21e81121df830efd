"""``python -m dermsearch.train.migrate PATH ...``: convert run states written before resumable
training (a ``state.json`` with the run's settings under ``config`` and no resume ``key``) so that
today's trainers resume them. The harness refuses such a state and names this command.

PATH: a state file or a directory searched for them (a classifier run's ``members/m{i}-state.json``,
a segmenter run's ``state.json``). Each converted file gets the key those runs resumed against
(a member: its config with the defaults of then for settings added since, without phase two's
settings; a segmenter: its config) and its best score under ``best``; files that have a key are
left alone. Written atomically.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from ..io import write_json
from .harness import resume_key
from .members import PHASE_TWO_FIELDS

__all__ = ["legacy_key", "migrate_state", "migrate"]

_MEMBER_STATE = re.compile(r"m\d+-state\.json")


def legacy_key(path: Path, config: dict) -> dict:
    """The resume key of a pre-harness state file at ``path`` with settings ``config``."""
    if _MEMBER_STATE.fullmatch(path.name):   # members trained before these settings existed trained as their default
        return resume_key({"colour": "none", "init_members": "", **config}, PHASE_TWO_FIELDS)
    return resume_key(config)


def migrate_state(path: str | Path) -> bool:
    """Convert one state file; False when it needs nothing (it has a key)."""
    path = Path(path)
    state = json.loads(path.read_text())
    if "key" in state or "config" not in state:
        return False
    state = {**state, "key": legacy_key(path, state["config"]),
             "best": state.get("best", state.get("best_dice", -math.inf))}
    write_json(path, state, indent=1)
    return True


def migrate(paths: list[str | Path]) -> list[Path]:
    """Convert every pre-harness state file in ``paths`` (files or directories); returns the converted ones."""
    files = []
    for p in map(Path, paths):
        files += sorted(p.rglob("*state.json")) if p.is_dir() else [p]
    return [f for f in files if migrate_state(f)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dermsearch.train.migrate",
                                 description="convert run states written before resumable training (no resume "
                                             "key) so that the trainers resume them")
    ap.add_argument("paths", nargs="+", help="state files or run directories")
    done = migrate(ap.parse_args(argv).paths)
    for f in done:
        print(f"converted {f}")
    print(f"{len(done)} state file(s) converted")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
