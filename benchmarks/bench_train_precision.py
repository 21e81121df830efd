"""What ``--precision bf16`` buys a training step on this CPU: phase one's member step (the trainer's
own ``_Member.loss``, AdamW) in float32 against bfloat16 autocast, paired, interleaved rounds, medians.

    python benchmarks/bench_train_precision.py [--trained 2 3 7] [--batch 32 64] [--rounds 3]

``--trained N``: the last N stages trained on the frozen prefix's outputs (2 = the shipped recipe, 7 =
whole members). Random inputs at 224 px (speed does not depend on the pixels). Prints JSON; the CPU
model and whether it has AMX / AVX512-BF16 are in "machine". Without them bf16 is emulated and slower.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import cpu_model, emit, machine

from dermsearch.models import create_backbone
from dermsearch.train.losses import multiclass_focal_loss
from dermsearch.train.members import Member as _Member


def cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return sorted(f for f in set(flags) if f in ("amx_bf16", "amx_tile", "avx512_bf16"))


def step_seconds(member: _Member, opt, h: torch.Tensor, y: torch.Tensor, precision: str) -> float:
    member.set_train()
    t0 = time.perf_counter()
    loss = member.loss(h, y, lambda logits, y: multiclass_focal_loss(logits, y), 1.0, precision)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trained", type=int, nargs="+", default=[2, 3, 7])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    results = []
    for trained in a.trained:
        for batch in a.batch:
            k = 7 - trained
            torch.manual_seed(0)
            members, opts = {}, {}
            for precision in ("fp32", "bf16"):     # one member each, so that neither warms the other's optimiser
                backbone = create_backbone("efficientnet-lite0")
                backbone.classifier = None
                members[precision] = _Member(backbone, k, 7, 0.2)
                opts[precision] = torch.optim.AdamW(members[precision].trainable(), lr=1e-4)
            with torch.no_grad():
                x = torch.rand(batch, 3, 224, 224) * 255
                h = members["fp32"].backbone.forward_prefix(x, k)[0] if k else x
            y = torch.randint(0, 7, (batch,))
            times: dict[str, list[float]] = {"fp32": [], "bf16": []}
            for p in ("fp32", "bf16"):                 # warm-up, untimed (oneDNN builds its kernels)
                step_seconds(members[p], opts[p], h, y, p)
            for _ in range(a.rounds):
                for p in ("fp32", "bf16"):
                    times[p].append(step_seconds(members[p], opts[p], h, y, p))
            med = {p: statistics.median(v) for p, v in times.items()}
            results.append({"trained_stages": trained, "batch": batch,
                            "s_per_batch": {p: round(v, 3) for p, v in med.items()},
                            "images_per_s": {p: round(batch / v, 1) for p, v in med.items()},
                            "speedup_bf16": round(med["fp32"] / med["bf16"], 2)})
            print(results[-1], flush=True)
    emit({"rounds": a.rounds, "threads": torch.get_num_threads(), "results": results,
          "machine": {**machine(), "cpu": cpu_model(), "bf16_flags": cpu_flags()}})


if __name__ == "__main__":
    main()
