"""experiments/device_pack.py: what a GPU run carries, and the ensemble it sends back."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("device_pack", ROOT / "experiments" / "device_pack.py")
device_pack = importlib.util.module_from_spec(spec)
spec.loader.exec_module(device_pack)


def _dataset(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "ham"
    (root / "images").mkdir(parents=True)
    rows, split = [], []
    for i, s in enumerate(["train", "train", "val", "test", "train"]):
        name = f"ISIC_{i:07d}"
        if i != 4:                                  # the last row's image is missing
            (root / "images" / f"{name}.jpg").write_bytes(bytes([i]) * (100 + i))
        rows.append({"image_id": name, "lesion_id": f"L{i}", "diagnosis": "nv", "image_path": f"images/{name}.jpg",
                     "mask_path": f"masks/{name}.png"})
        split.append({"image_id": name, "split": s})
    for path, data in ((root / "labels.csv", rows), (root / "split.csv", split)):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(data[0]))
            w.writeheader()
            w.writerows(data)
    return root / "labels.csv", root / "split.csv"


def test_pack_copies_only_the_chosen_splits_byte_for_byte(tmp_path, capsys):
    labels, split = _dataset(tmp_path)
    out = tmp_path / "pack"
    counts = device_pack.pack_images(labels, split, ("train", "val"), out)
    assert counts == {"train": 2, "val": 1}                          # test left out, missing image named
    assert "ISIC_0000004.jpg: missing" in capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "data" / "labels.csv")))
    assert [r["image_id"] for r in rows] == ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"]
    assert "mask_path" not in rows[0]                                  # masks are not needed to train
    for r in rows:
        assert (out / "data" / r["image_path"]).read_bytes() == (labels.parent / r["image_path"]).read_bytes()
    assert {r["image_id"]: r["split"] for r in csv.DictReader(open(out / "data" / "split.csv"))} == {
        "ISIC_0000000": "train", "ISIC_0000001": "train", "ISIC_0000002": "val"}
    assert sorted(p.name for p in (out / "data" / "images").iterdir()) == [
        "ISIC_0000000.jpg", "ISIC_0000001.jpg", "ISIC_0000002.jpg"]


def test_travelling_bytes_counts_tracked_untracked_and_the_pack_but_not_ignored(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / ".gitignore").write_text("/pack/\n/build/\n")
    (repo / "big.bin").write_bytes(b"x" * 5000)
    (repo / "small.txt").write_bytes(b"y" * 10)
    subprocess.run(["git", "add", "."], cwd=repo, check=True)
    (repo / "new.txt").write_bytes(b"z" * 300)                   # untracked, not ignored: travels
    (repo / "build").mkdir()
    (repo / "build" / "out.o").write_bytes(b"o" * 9999)           # ignored: stays
    (repo / "pack").mkdir()
    (repo / "pack" / "w.whl").write_bytes(b"w" * 700)             # carried
    total, tracked = device_pack.travelling_bytes(repo, repo / "pack")
    assert total == 5000 + 10 + len("/pack/\n/build/\n") + 300 + 700
    assert tracked[0] == (5000, "big.bin")
    (repo / "big.bin").unlink()                                      # moved aside for the call
    assert device_pack.travelling_bytes(repo, repo / "pack")[0] == total - 5000


def test_join_reassembles_and_refuses_parts_that_do_not_add_up(tmp_path):
    blob = bytes(range(256)) * 1000
    back = tmp_path / "back"
    back.mkdir()
    for i, start in enumerate(range(0, len(blob), 100_000)):
        (back / f"ensemble.safetensors.part-a{chr(97 + i)}").write_bytes(blob[start:start + 100_000])
    (back / "ensemble.safetensors.sha256").write_text(hashlib.sha256(blob).hexdigest() + "  ensemble.safetensors\n")
    got = device_pack.join_parts(back, tmp_path / "joined" / "e.safetensors")
    assert got.read_bytes() == blob
    (back / "ensemble.safetensors.part-ab").unlink()
    with pytest.raises(SystemExit, match="sha256 differs"):
        device_pack.join_parts(back, tmp_path / "joined" / "f.safetensors")
    assert not (tmp_path / "joined" / "f.safetensors").exists()
    with pytest.raises(SystemExit, match="no ensemble.safetensors.part"):
        device_pack.join_parts(tmp_path, tmp_path / "g.safetensors")
