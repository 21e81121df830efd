"""Every random stream of training, in one place: what each draws from a run's ``seed``.

The global torch generator is seeded only here (:func:`seed_torch`) and, on a resume, restored by
the harness (``state.json``'s ``rng``); it serves what draws from it implicitly: initial weights
and dropout. Everything else has a generator of its own, derived from the seed and where it is
used (member, epoch, image), so that it does not depend on what ran before it.

The derivations are part of what a run computes: changing one changes every result for a seed.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["seed_torch", "member_init_seed", "member_sample_rng", "fold_rng", "member_epoch_rngs", "head_epoch_rng",
           "prefix_variant_generator", "segmenter_epoch_generator"]


def seed_torch(seed: int) -> None:
    """Seed the global torch generator (initial weights, dropout) for what follows."""
    torch.manual_seed(seed)


def member_init_seed(seed: int, member: int) -> int:
    """Phase one: the global seed under which member ``member`` (0-based) is initialised and trained."""
    return seed * 1000 + member


def member_sample_rng(seed: int, member: int) -> np.random.Generator:
    """Phase one: the bootstrap sample of member ``member``."""
    return np.random.default_rng(seed * 7919 + member)


def fold_rng(seed: int) -> np.random.Generator:
    """Phase one, diversity ``fold``: the assignment of the training images to folds."""
    return np.random.default_rng(seed)


def member_epoch_rngs(seed: int, member: int, epoch: int) -> tuple[np.random.Generator, torch.Generator]:
    """Phase one: one epoch's order and variant draws (numpy) and its augmentation (torch, seeded from it)."""
    rng = np.random.default_rng([seed, member, epoch])
    return rng, torch.Generator().manual_seed(int(rng.integers(2**31)))


def head_epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """Phase two: one epoch's order."""
    return np.random.default_rng([seed, 99, epoch])


def prefix_variant_generator(seed: int, first_image: int, variant: int) -> torch.Generator:
    """The frozen prefix's cache: the x7 variant ``variant`` of the batch starting at ``first_image``."""
    return torch.Generator().manual_seed(seed * 1_000_003 + first_image * 8 + variant)


def segmenter_epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The segmenter: one epoch's order."""
    return torch.Generator().manual_seed(seed * 1000 + epoch)
