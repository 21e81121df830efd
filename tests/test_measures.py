"""Every measure against hand-computed values and a naive per-pair loop written from the
paper's equations (1)-(14)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dermsearch.extract.gram import gram_matrix, style_vector
from dermsearch.extract.masks import pack_masks
from dermsearch.search.measures import MEASURES, cosine_new, harmonic_mean, measure_scores

from .one_query import cosine_similarities, dice_coefficients, euclidean_distances, max_normalised, style_losses


# ----------------------------------------------------------------- naive references
def ref_ed(x, y):
    return math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(x, y)))


def ref_cs(x, y):
    dot = sum(float(a) * float(b) for a, b in zip(x, y))
    nx = math.sqrt(sum(float(a) ** 2 for a in x))
    ny = math.sqrt(sum(float(b) ** 2 for b in y))
    return dot / (nx * ny)


def ref_ls(grams_x, grams_y, betas):
    total = 0.0
    for gx, gy, beta in zip(grams_x, grams_y, betas):
        c = gx.shape[0]
        for i in range(c):
            for j in range(c):
                total += (beta * float(gx[i, j]) - beta * float(gy[i, j])) ** 2
    return total


def ref_dice(mx, my):
    a, b = int(mx.sum()), int(my.sum())
    if a + b == 0:
        return 1.0
    return 2 * int((mx & my).sum()) / (a + b)


def ref_i1(*parts):
    if any(p == 0 for p in parts):
        return 0.0
    return len(parts) / sum(1 / p for p in parts)


def ref_all(q, Y):
    """Naive per-pair loop over candidates: q and Y hold feature, grams, mask."""
    eds = [ref_ed(q["f"], y["f"]) for y in Y]
    lss = [ref_ls(q["g"], y["g"], q["beta"]) for y in Y]
    ed_max, ls_max = max(eds), max(lss)
    out = {m: [] for m in MEASURES}
    for y, ed, ls in zip(Y, eds, lss):
        es = 1 - ed / ed_max if ed_max > 0 else 1.0
        cs = (ref_cs(q["f"], y["f"]) + 1) / 2
        ss = 1 - ls / ls_max if ls_max > 0 else 1.0
        dc = ref_dice(q["m"], y["m"])
        for name, v in (("euclidean", es), ("cosine", cs), ("style", ss), ("dice", dc),
                        ("i1_ed", ref_i1(es, dc)), ("i1_cd", ref_i1(cs, dc)), ("i1_ecd", ref_i1(es, cs, dc)),
                        ("i1_se", ref_i1(ss, es)), ("i1_sc", ref_i1(ss, cs)), ("i1_sd", ref_i1(ss, dc))):
            out[name].append(v)
    return out


def fast_all(q, Y):
    F = np.stack([y["f"] for y in Y]).astype(np.float32)
    S = np.concatenate([style_vector([torch.from_numpy(g[None]) for g in y["g"]], q["beta"]) for y in Y])
    sq = style_vector([torch.from_numpy(g[None]) for g in q["g"]], q["beta"])[0]
    M = pack_masks(np.stack([y["m"] for y in Y]))
    areas = np.array([y["m"].sum() for y in Y])
    qm = pack_masks(q["m"][None])[0]
    comp = {
        "euclidean": max_normalised(euclidean_distances(q["f"], F)),
        "cosine": cosine_new(cosine_similarities(q["f"], F)),
        "style": max_normalised(style_losses(sq, S)),
        "dice": dice_coefficients(qm, int(q["m"].sum()), M, areas),
    }
    return measure_scores(comp)


def random_item(rng, chans=(3, 5), dim=12, mask=16, empty=False):
    grams = []
    for c in chans:
        f = rng.normal(size=(c, 7)).astype(np.float32)
        grams.append((f @ f.T / 7).astype(np.float32))
    m = np.zeros((mask, mask), bool) if empty else rng.random((mask, mask)) < rng.uniform(0.1, 0.6)
    return {"f": rng.normal(size=dim).astype(np.float32), "g": grams, "m": m, "beta": [1 / c for c in chans]}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_all_measures_match_naive_loop(seed):
    rng = np.random.default_rng(seed)
    q = random_item(rng)
    Y = [random_item(rng) for _ in range(9)]
    Y.append(dict(q))                            # an identical candidate: zero distances
    Y.append(random_item(rng, empty=True))       # an empty mask
    ref, fast = ref_all(q, Y), fast_all(q, Y)
    for m in MEASURES:
        np.testing.assert_allclose(fast[m], ref[m], rtol=1e-5, atol=1e-6, err_msg=m)
    # the identical candidate is top for every feature/style measure, with score 1
    for m in ("euclidean", "style", "i1_se"):
        assert fast[m][9] == pytest.approx(1.0)
    assert fast["dice"][10] == 0.0 and fast["i1_sd"][10] == 0.0  # one empty mask -> 0


def test_empty_query_mask_and_empty_candidate_give_dice_one():
    empty = np.zeros((1, 16, 16), bool)
    full = np.ones((1, 16, 16), bool)
    M = pack_masks(np.concatenate([empty, full]))
    dc = dice_coefficients(pack_masks(empty)[0], 0, M, np.array([0, 256]))
    assert dc.tolist() == [1.0, 0.0]


def test_all_equal_candidates_score_one():
    q = np.array([1.0, 2.0, 3.0], np.float32)
    X = np.tile(q, (4, 1))
    es = max_normalised(euclidean_distances(q, X))
    assert es.tolist() == [1.0] * 4
    assert not np.isnan(es).any()


def test_hand_computed_values():
    q = np.array([0.0, 0.0], np.float32)
    X = np.array([[3.0, 4.0], [0.0, 1.0], [0.0, 0.0]], np.float32)
    ed = euclidean_distances(q, X)
    assert ed.tolist() == [5.0, 1.0, 0.0]
    assert max_normalised(ed).tolist() == [0.0, 0.8, 1.0]
    cs = cosine_similarities(np.array([1.0, 0.0], np.float32), np.array([[1, 0], [0, 1], [-1, 0]], np.float32))
    assert cosine_new(cs).tolist() == [1.0, 0.5, 0.0]
    # harmonic means: I1 of (0.5, 1) = 2/(2+1) = 2/3; three-way (0.5, 0.5, 1) = 3/(2+2+1) = 0.6
    assert harmonic_mean(np.array([0.5]), np.array([1.0]))[0] == pytest.approx(2 / 3)
    assert harmonic_mean(np.array([0.5]), np.array([0.5]), np.array([1.0]))[0] == pytest.approx(0.6)
    # a zero component gives 0, never NaN or an error
    with np.errstate(all="raise"):
        assert harmonic_mean(np.array([0.0, 0.7]), np.array([0.9, 0.0])).tolist() == [0.0, 0.0]
    # dice: X = 3 pixels, Y = 2 pixels, overlap 2 -> 2*2/5
    a = np.zeros((1, 8, 8), bool)
    b = np.zeros((1, 8, 8), bool)
    a[0, 0, :3] = True
    b[0, 0, 1:3] = True
    assert dice_coefficients(pack_masks(a)[0], 3, pack_masks(b), np.array([2]))[0] == pytest.approx(0.8)


def test_gram_normalisation_by_hw():
    f = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])  # C=2, H=W=2
    g = gram_matrix(f)[0]
    assert g.tolist() == [[30 / 4, 6 / 4], [6 / 4, 2 / 4]]


def test_style_vector_distance_is_eq6():
    rng = np.random.default_rng(7)
    betas = [0.5, 2.0]
    ga = [torch.from_numpy(rng.normal(size=(1, 3, 3))) for _ in betas]
    gb = [torch.from_numpy(rng.normal(size=(1, 3, 3))) for _ in betas]
    ga = [g + g.transpose(1, 2) for g in ga]  # Grams are symmetric
    gb = [g + g.transpose(1, 2) for g in gb]
    va, vb = style_vector(ga, betas), style_vector(gb, betas)
    ref = ref_ls([g[0].numpy() for g in ga], [g[0].numpy() for g in gb], betas)
    assert float(((va - vb).astype(np.float64) ** 2).sum()) == pytest.approx(ref, rel=1e-5)


def test_near_duplicates_keep_precision():
    rng = np.random.default_rng(3)
    x = rng.normal(size=80_000).astype(np.float32) * 100
    y = x.copy()
    y[0] += 1e-3
    ls = style_losses(x, y[None])[0]
    assert ls == pytest.approx(float(np.float32(y[0]) - np.float32(x[0])) ** 2, rel=1e-3)


def test_one_dice_for_numbers_arrays_and_tensors():
    from dermsearch.evaluate.masks import dice_scores
    from dermsearch.search.explain import mask_explanation
    from dermsearch.search.measures import dice

    inter, total = np.array([[3.0, 0.0, 0.0]]), np.array([[7.0, 0.0, 5.0]])
    np.testing.assert_array_equal(dice(inter, total), [[6 / 7, 1.0, 0.0]])
    np.testing.assert_array_equal(dice(torch.from_numpy(inter), torch.from_numpy(total)).numpy(), dice(inter, total))
    assert float(dice(3, 7)) == 6 / 7 and float(dice(0, 0)) == 1.0
    a, b = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    a[:2, :3], b[:2, :2] = True, True                       # areas 6 and 4, overlap 4: Dice 0.8
    assert mask_explanation(pack_masks(a[None])[0], pack_masks(b[None])[0], 8)["dice"] == pytest.approx(0.8)
    pred, target = torch.from_numpy(np.stack([a, a, np.zeros_like(a)])[:, None]), torch.from_numpy(
        np.stack([b, np.zeros_like(b), np.zeros_like(b)])[:, None])
    np.testing.assert_allclose(dice_scores(pred, target).numpy(), [0.8, 0.0, 1.0])
