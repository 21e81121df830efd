"""The product kernels and the per-machine choice between them: measured once, cached, used."""

from __future__ import annotations

import json

import numpy as np
import pytest

from dermsearch.cli.main import main
from dermsearch.errors import ConfigError
from dermsearch.search import kernels
from dermsearch.search.engine import ExactEngine


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DERMSEARCH_CACHE", str(tmp_path))
    monkeypatch.delenv("DERMSEARCH_KERNEL", raising=False)
    monkeypatch.setattr(kernels, "_CHOICE", None)
    monkeypatch.setattr(kernels, "_CHOOSER", None)
    return tmp_path / "kernels.json"


@pytest.mark.parametrize("shape", [(300, 70), (129, 65_536)])        # small, and above SMALL_PRODUCT values
@pytest.mark.parametrize("queries", [1, 5])
def test_both_kernels_give_the_same_products(shape, queries):
    rng = np.random.default_rng(0)
    X = rng.normal(size=shape).astype(np.float32)
    Q = rng.normal(size=(queries, shape[1])).astype(np.float32)
    ref = Q.astype(np.float64) @ X.T.astype(np.float64)
    scale = np.abs(Q).astype(np.float64) @ np.abs(X).T.astype(np.float64)
    for name, fn in kernels.KERNELS.items():
        got = fn(Q, X)
        assert got.shape == (queries, shape[0]) and got.dtype == np.float32, name
        assert np.all(np.abs(got - ref) <= 1e-5 * scale + 1e-6), name


def test_calibration_measures_caches_and_reuses(cache, monkeypatch):
    record = kernels.calibrate(megabytes=8)
    assert not record["cached"] and record["choice"] in kernels.KERNELS
    measured = record["measured"]["kernels"]
    assert set(measured) == set(kernels.KERNELS)               # torch is installed in the test environment
    assert all(v["one_query_gb_s"] > 0 for v in measured.values())
    fastest = max(measured, key=lambda k: measured[k]["one_query_gb_s"])
    assert record["choice"] == fastest
    on_disk = json.loads(cache.read_text())
    assert on_disk["choice"] == record["choice"] and on_disk["machine"]["cpu"] == kernels.cpu_model()

    def no_measuring(*a, **k):
        raise AssertionError("measured again although this machine is cached")
    monkeypatch.setattr(kernels, "measure", no_measuring)
    again = kernels.calibrate()
    assert again["cached"] and again["choice"] == record["choice"]
    # a record made on another machine (or with other libraries) is not trusted
    on_disk["machine"]["cpu"] = "some other processor"
    cache.write_text(json.dumps(on_disk))
    with pytest.raises(AssertionError, match="measured again"):
        kernels.calibrate()


def _cached_choice(cache, choice: str) -> None:
    cache.write_text(json.dumps({"machine": kernels._machine_key(), "choice": choice,
                                 "measured": {"kernels": {choice: {"one_query_gb_s": 9.9}}}}))


@pytest.mark.parametrize("choice", ["numpy", "torch"])
def test_large_matrices_use_the_calibrated_kernel_and_engines_record_it(cache, choice):
    _cached_choice(cache, choice)
    assert kernels.kernel_for(10, 100) == "numpy"            # small: never calibrated, never torch
    assert kernels.kernel_for(200, 65_536) == choice
    rng = np.random.default_rng(0)
    F = rng.normal(size=(130, 16)).astype(np.float32)
    S = rng.normal(size=(130, 65_536)).astype(np.float32)
    engine = ExactEngine(F, S)
    assert engine.kernel == choice and engine.product is kernels.tuned_products
    assert ExactEngine(F[:, :8], None).product is kernels.KERNELS["numpy"]


def test_the_chooser_switches_to_the_kernel_that_reads_faster_in_use(cache):
    switches = []
    c = kernels.KernelChooser("numpy", ["numpy", "torch"], explore_every=3, window=5, min_samples=3,
                              on_switch=lambda name, rates: switches.append((name, rates)))
    seconds = {"numpy": 0.2, "torch": 0.1}            # torch reads twice as fast in use
    picks = []
    for _ in range(40):
        name = c.pick()
        picks.append(name)
        c.record(name, 10**9, seconds[name])
    assert c.current == "torch" and c.switches == 1 and switches[0][0] == "torch"
    assert switches[0][1] == {"numpy": 5.0, "torch": 10.0}                  # GB/s medians
    assert picks[:3] == ["numpy", "numpy", "torch"]                         # every 3rd call explores
    # and it stays when the serving kernel is the faster one
    seconds = {"numpy": 0.3, "torch": 0.1}
    for _ in range(30):
        name = c.pick()
        c.record(name, 10**9, seconds[name])
    assert c.current == "torch" and c.switches == 1


def test_tuned_products_record_large_single_queries_and_write_a_switch(cache, monkeypatch):
    _cached_choice(cache, "numpy")
    monkeypatch.setattr(kernels, "_CHOOSER", None)
    monkeypatch.setattr(kernels, "last_level_cache_bytes", lambda: 0)
    c = kernels.chooser()
    assert c.current == "numpy"
    X = np.random.default_rng(0).normal(size=(300, 65_536)).astype(np.float32)     # 79 MB > 64 MB
    q = np.ones((1, 65_536), np.float32)
    kernels.tuned_products(q, X)
    kernels.tuned_products(np.ones((4, 65_536), np.float32), X)                  # a batch: not timed
    assert sum(len(r) for r in c.rates.values()) == 1
    c.on_switch("torch", {"numpy": 1.0, "torch": 2.0})
    on_disk = json.loads(cache.read_text())
    assert on_disk["choice"] == "torch" and on_disk["switched_in_use"]["median_gb_s"]["torch"] == 2.0


def test_the_environment_overrides_the_calibration(cache, monkeypatch):
    _cached_choice(cache, "torch")
    monkeypatch.setenv("DERMSEARCH_KERNEL", "numpy")
    assert kernels.kernel_for(200, 65_536) == "numpy"
    monkeypatch.setenv("DERMSEARCH_KERNEL", "blas")
    with pytest.raises(ConfigError, match="valid kernels are numpy, torch"):
        kernels.kernel_for(200, 65_536)


def test_calibrate_command(cache, capsys):
    _cached_choice(cache, "torch")
    assert main(["calibrate", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["choice"] == "torch" and out["cached"] is True
    assert main(["calibrate"]) == 0
    out = capsys.readouterr().out
    assert "uses the torch kernel (cached" in out and "one_query_gb_s 9.9" in out
