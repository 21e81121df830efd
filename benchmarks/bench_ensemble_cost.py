"""What a candidate ensemble costs at index and query time against the packaged one, paired.

    python benchmarks/bench_ensemble_cost.py --candidate FILE [--images 64] [--rounds 3]
    python benchmarks/bench_ensemble_cost.py --whole-members [--images 64]    # a stand-in, see below

The same extraction as ``dermsearch index`` and ``search`` (ONNX Runtime, the packaged segmenter, the
file's own views and colour correction, Grams pooled over the lesion), batch 16 (an index build) and
batch 1 (one query), interleaved rounds, medians. ``--whole-members`` times a randomly initialised
ensemble of the packaged one's shape but with no shared frozen stages (every member runs its whole
network: what ``--trainable-stages 7`` trains), written to a temporary file: its speed, not its
vectors, is what matters here. Prints JSON; the CPU model is in "machine".
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from _common import cpu_model, emit, ham_images, machine, time_extractors

from dermsearch.extract import Extractor, ExtractorConfig
from dermsearch.runtime import Runtime

STYLE = {"gram_pool": "lesion", "gram_margin": 0.05, "gram_norm": "l2"}   # the shipped style flags


def whole_member_standin(directory: Path) -> Path:
    import torch

    from dermsearch.models.ensemble import build_ensemble, default_ensemble_path, read_ensemble_spec, save_ensemble

    spec = read_ensemble_spec(default_ensemble_path())
    spec = replace(spec, shared_stages=0, metrics={})
    torch.manual_seed(0)
    path = directory / "whole-members.safetensors"
    save_ensemble(build_ensemble(spec), spec, path)
    return path


def main() -> None:
    ap = argparse.ArgumentParser()
    group = ap.add_mutually_exclusive_group(required=True)
    group.add_argument("--candidate", type=Path, metavar="FILE", help="an ensemble file (dermsearch train classifier)")
    group.add_argument("--whole-members", action="store_true", help="a stand-in with no shared stages")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    images = ham_images(a.images)
    with tempfile.TemporaryDirectory() as tmp:
        candidate = a.candidate or whole_member_standin(Path(tmp))
        runtime = Runtime(backend="onnx")
        extractors = {"shipped": Extractor(ExtractorConfig(), runtime),
                      "candidate": Extractor(ExtractorConfig.for_weights(str(candidate), **STYLE,
                                                                        gram_weights="inverse-channels"), runtime)}
        out = time_extractors(extractors, images, a.rounds)
        shapes = {name: {"shared_stages": ex.net.shared_stages, "views": ex.tta} for name, ex in extractors.items()}
    emit({"images": len(images), "rounds": a.rounds, "candidate": "whole-member stand-in" if a.whole_members
          else str(a.candidate), "extraction": out, "models": shapes,
          "ratio_batch16": round(out["candidate"]["ms_per_image_batch16"] / out["shipped"]["ms_per_image_batch16"], 2),
          "ratio_batch1": round(out["candidate"]["ms_per_image_batch1"] / out["shipped"]["ms_per_image_batch1"], 2),
          "machine": {**machine(), "cpu": cpu_model()}})


if __name__ == "__main__":
    main()
