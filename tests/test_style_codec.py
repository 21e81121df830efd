"""The int6 re-rank rows (search/style_codec.py) against a naive reference: an explicit orthonormal
DCT-II matrix, per-value rounding, the columns of no group left at 0; their size; damaged files."""

from __future__ import annotations

import numpy as np
import pytest

from dermsearch.search.fast_rows import FullRowsError, open_compact_rows, write_compact_rows
from dermsearch.search.style_codec import CLIP, LEVELS

GROUPS = ((0, 5), (5, 12), (20, 84))     # columns 12-20 and 84-90 are in no group (0 in every row)
WIDTH = 90


def _dct_matrix(n: int) -> np.ndarray:
    k, i = np.arange(n)[:, None], np.arange(n)[None]
    m = np.sqrt(2 / n) * np.cos(np.pi * (2 * i + 1) * k / (2 * n))
    m[0] /= np.sqrt(2)
    return m


def _rows(n=40, seed=0):
    rng = np.random.default_rng(seed)
    S = np.zeros((n, WIDTH), np.float32)
    for a, b in GROUPS:
        S[:, a:b] = rng.gamma(2.0, 1.0, size=(n, b - a)) * rng.uniform(0.5, 4, size=(n, 1)) + 5
    return S


def _reference(S, directory):
    """Decode by hand from the stored signs and mean: y = D (signs * (x - mu)), c = clip(rint(y / s)),
    x^ = signs * D^T (s c) + mu with s = CLIP * rms(y) / LEVELS."""
    signs, mu = np.load(directory / "style_int6_signs.npy"), np.load(directory / "style_int6_mu.npy")
    out, err2, at = np.zeros(S.shape), np.zeros(len(S)), 0
    for a, b in GROUPS:
        w = b - a
        D = _dct_matrix(w)
        x = S[:, a:b].astype(np.float64) - mu[at:at + w]
        y = (x * signs[at:at + w]) @ D.T
        s = (CLIP * np.sqrt((y * y).mean(axis=1)) / LEVELS).astype(np.float32).astype(np.float64)
        c = np.clip(np.rint(y / s[:, None]), -LEVELS, LEVELS)
        out[:, a:b] = ((c * s[:, None]) @ D) * signs[at:at + w] + mu[at:at + w]
        err2 += ((y - c * s[:, None]) ** 2).sum(axis=1)
        at += w
    return out, np.sqrt(err2)


def test_int6_rows_decode_as_the_reference_and_record_their_error(tmp_path):
    S = _rows()
    write_compact_rows(tmp_path, S, "int6", GROUPS)
    rows = open_compact_rows(tmp_path, "int6", WIDTH)
    want, err = _reference(S, tmp_path)
    got = rows(np.array([3, 0, 39, 3]))
    np.testing.assert_allclose(got, want[[3, 0, 39, 3]], rtol=1e-5, atol=1e-4)
    assert (got[:, 12:20] == 0).all() and (got[:, 84:] == 0).all()
    np.testing.assert_allclose(rows.all(), want, rtol=1e-5, atol=1e-4)
    stored = np.load(tmp_path / "style_code_err.npy")
    np.testing.assert_allclose(stored, err, rtol=1e-4)
    # the error is the distance to the decoded row (the map is orthogonal) and small against the row
    np.testing.assert_allclose(stored, np.linalg.norm(S.astype(np.float64) - want, axis=1), rtol=1e-3)
    rel = stored / np.linalg.norm(S - S.mean(0), axis=1)
    assert np.median(rel) < 0.04 and rel.max() < 0.1, rel          # 6 bits: ~3 % of a row's spread


def test_int6_rows_are_smaller_than_six_bits_a_value(tmp_path):
    rng = np.random.default_rng(1)
    groups, n = ((0, 3000), (3000, 4096)), 32
    z = rng.normal(size=(n, 3))
    S = (z @ rng.normal(size=(3, 4096)) + 0.2 * rng.normal(size=(n, 4096)) + 3).astype(np.float32)
    write_compact_rows(tmp_path, S, "int6", groups)
    offsets = np.load(tmp_path / "style_int6_offsets.npy")
    assert offsets[-1] == (tmp_path / "style_int6.bin").stat().st_size
    assert offsets[-1] / n < 0.75 * 4096, offsets[-1] / n      # deflate: under 6 bits a value on average
    assert offsets[-1] / n > 0.25 * 4096                       # and not by dropping information


def test_rows_are_huffman_coded_near_their_entropy_and_streams_with_matches_still_read(tmp_path):
    import zlib

    from dermsearch.search.style_codec import Int6Rows, deflate

    rng = np.random.default_rng(3)
    codes = np.clip(np.rint(rng.normal(0, LEVELS / CLIP, size=20_000)), -LEVELS, LEVELS).astype(np.int8)
    _, counts = np.unique(codes, return_counts=True)
    p = counts / counts.sum()
    entropy_bytes = float(-(p * np.log2(p)).sum()) * codes.size / 8
    blob = deflate(codes.tobytes())
    assert zlib.decompress(blob) == codes.tobytes()
    assert len(blob) < 1.02 * entropy_bytes, (len(blob), entropy_bytes)      # Huffman: within 2 % here
    assert len(blob) < len(zlib.compress(codes.tobytes(), 6))                # matches only cost bits here
    # rows written with LZ77 matches (before Huffman alone) read back the same
    S = _rows(12)
    write_compact_rows(tmp_path, S, "int6", GROUPS)
    rows = Int6Rows(tmp_path, WIDTH)
    want = rows.codes(np.arange(12))
    offsets = np.load(tmp_path / "style_int6_offsets.npy")
    assert (tmp_path / "style_int6.bin").read_bytes()[:offsets[1]] == deflate(want[0].tobytes())   # the writer's
    old = [zlib.compress(c.tobytes(), 6) for c in want]
    (tmp_path / "style_int6.bin").write_bytes(b"".join(old))
    np.save(tmp_path / "style_int6_offsets.npy", np.concatenate([[0], np.cumsum([len(b) for b in old])]))
    np.testing.assert_array_equal(Int6Rows(tmp_path, WIDTH).codes(np.arange(12)), want)


def test_constant_rows_decode_to_the_mean(tmp_path):
    S = np.tile(_rows(1), (5, 1))
    write_compact_rows(tmp_path, S, "int6", GROUPS)
    got = open_compact_rows(tmp_path, "int6", WIDTH)(np.arange(5))
    np.testing.assert_allclose(got, S, rtol=1e-5, atol=1e-5)
    assert (np.load(tmp_path / "style_int6_scales.npy") == 1).all()


def test_shards_compute_the_losses_as_local_does(tmp_path):
    from dermsearch.search.fast_rows import RowRange

    S = _rows()
    write_compact_rows(tmp_path, S, "int6", GROUPS)
    whole = open_compact_rows(tmp_path, "int6", WIDTH)
    shard = RowRange(whole, 10, 30)
    np.testing.assert_array_equal(shard.style_losses(S[3], np.array([0, 5, 19])),
                                  whole.style_losses(S[3], np.array([10, 15, 29])))
    # a row against its own code: the loss is its rounding error², to float64 precision (no cancellation)
    err = np.load(tmp_path / "style_code_err.npy")
    own = np.array([whole.style_losses(S[i], np.array([i]))[0] for i in (0, 12, 39)])
    np.testing.assert_allclose(own, err[[0, 12, 39]] ** 2, rtol=1e-6)


def test_non_finite_rows_are_refused(tmp_path):
    S = _rows(4)
    S[2, 7] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        write_compact_rows(tmp_path, S, "int6", GROUPS)


def test_damaged_int6_files_say_so(tmp_path):
    S = _rows()
    write_compact_rows(tmp_path, S, "int6", GROUPS)
    blob = tmp_path / "style_int6.bin"
    data = bytearray(blob.read_bytes())
    offsets = np.load(tmp_path / "style_int6_offsets.npy")
    data[offsets[5] + 2:offsets[6] - 4] = bytes(offsets[6] - 4 - offsets[5] - 2)      # row 5's stream zeroed
    blob.write_bytes(bytes(data))
    rows = open_compact_rows(tmp_path, "int6", WIDTH)
    assert rows(np.array([4, 6])).shape == (2, WIDTH)                                # the others still read
    with pytest.raises(FullRowsError, match="int6 row 5 is damaged"):
        rows(np.array([4, 5]))
    rows.workers = 2
    with pytest.raises(FullRowsError, match="int6 row 5 is damaged"):              # inflated on threads
        rows(np.arange(20))
    with pytest.raises(FullRowsError, match="int6 row 5 is damaged"):
        rows.style_losses(S[0], np.arange(3, 7))
    blob.write_bytes(bytes(data[:-10]))                                               # truncated
    with pytest.raises(FullRowsError, match="cannot be read"):
        open_compact_rows(tmp_path, "int6", WIDTH)
    with pytest.raises(FullRowsError, match="cannot be read"):
        open_compact_rows(tmp_path, "int6", WIDTH + 1)                               # written for other rows
    (tmp_path / "style_int6_scales.npy").write_bytes(b"")
    with pytest.raises(FullRowsError, match="cannot be read"):
        open_compact_rows(tmp_path, "int6", WIDTH)


def test_style_losses_in_the_rotated_space_equal_those_of_the_decoded_rows(tmp_path):
    from dermsearch.search.engine import ExactEngine, Query

    S = _rows()
    write_compact_rows(tmp_path, S, "int6", GROUPS)
    reader = open_compact_rows(tmp_path, "int6", WIDTH)
    rows = np.array([1, 7, 30, 39])
    rng = np.random.default_rng(5)
    for q in (S[7], S[0] + rng.normal(size=WIDTH).astype(np.float32)):      # a stored row; noise in every column
        want = ExactEngine(np.zeros((4, 1), np.float32), reader(rows)).raw(
            Query.batch([Query(np.zeros(1, np.float32), q)]), ["style"])["style"][0]
        np.testing.assert_allclose(reader.style_losses(q, rows), want, rtol=1e-4, atol=1e-4)
