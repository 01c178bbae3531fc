"""Offline loaders: shapes, dtypes, determinism, caching, and the missing-dataset error."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from unigrad import UnigradError
from unigrad.data import fashion_mnist, load_digits, load_fashion_mnist, load_mnist1d
from unigrad.data.digits import stratified_split
from unigrad.data.mnist1d import CACHE_FILE


def _check_split(data, n_train, n_test, shape, classes=10):
    x_train, y_train, x_test, y_test = data
    assert x_train.shape == (n_train, *shape) and x_test.shape == (n_test, *shape)
    assert y_train.shape == (n_train,) and y_test.shape == (n_test,)
    assert x_train.dtype == torch.float32 and x_test.dtype == torch.float32
    assert y_train.dtype == torch.int64 and y_test.dtype == torch.int64
    assert set(y_train.unique().tolist()) == set(range(classes))
    assert torch.isfinite(x_train).all() and torch.isfinite(x_test).all()
    # standardised with training statistics: 0 and 1 up to float32 rounding (digits: 5e-9, 1 + 5e-6; mnist1d:
    # −3e-4, 0.998); unstandardised pixels in [0, 1] would be ≈ 0.3 and ≈ 0.4
    assert abs(float(x_train.mean())) < 0.05 and abs(float(x_train.std()) - 1) < 0.05


def test_mnist1d_generates_caches_reloads_and_regenerates(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIGRAD_CACHE", str(tmp_path))
    np_state, py_state = np.random.get_state(), random.getstate()
    first = load_mnist1d()
    _check_split(first, 4000, 1000, (40,))
    # the generator seeds NumPy's and Python's global RNGs: their states must come back unchanged
    assert random.getstate() == py_state
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    cache = tmp_path / CACHE_FILE
    assert cache.is_file()
    cache.touch()
    mtime = cache.stat().st_mtime_ns
    for a, b in zip(first, load_mnist1d()):  # from the cache, which is left alone
        assert torch.equal(a, b)
    assert cache.stat().st_mtime_ns == mtime
    cache.write_bytes(b"not an npz file")  # a corrupt cache is regenerated, identically
    for a, b in zip(first, load_mnist1d()):
        assert torch.equal(a, b)
    with np.load(cache) as f:
        assert np.array_equal(f["y_test"], first[3].numpy())


def test_mnist1d_cache_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno
    import os

    from unigrad.data import mnist1d

    arrays = {k: np.zeros(s, np.float32 if k.startswith("x") else np.int64) for k, s in mnist1d.SHAPES.items()}
    monkeypatch.setattr(mnist1d, "generate", lambda: arrays)  # the real generator takes seconds

    def read_only(src, dst):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(os, "replace", read_only)
    loaded = load_mnist1d(tmp_path / "cache")  # a read-only cache only costs regeneration next time
    monkeypatch.undo()
    assert all(torch.equal(t, torch.from_numpy(arrays[k])) for t, k in zip(loaded, mnist1d.SHAPES))
    assert list((tmp_path / "cache").iterdir()) == []


def test_digits_split_is_fixed_and_stratified():
    a, b = load_digits(), load_digits()
    _check_split(a, 1437, 360, (64,))
    for u, v in zip(a, b):
        assert torch.equal(u, v)
    train_counts = torch.bincount(a[1], minlength=10).double()
    test_counts = torch.bincount(a[3], minlength=10).double()
    # each class contributes its share of the test set, within one sample
    share = (train_counts + test_counts) * 360 / 1797
    assert (test_counts - share).abs().max() < 1


def test_stratified_split_partitions_the_indices():
    y = np.repeat(np.arange(3), [50, 30, 20])
    train, test = stratified_split(y, 10, seed=1)
    assert len(test) == 10 and len(train) == 90
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(100))
    assert np.bincount(y[test]).tolist() == [5, 3, 2]


def test_missing_fashion_mnist_names_the_folder_and_the_package(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIGRAD_FASHION_MNIST", str(tmp_path))
    with pytest.raises(UnigradError, match="dataset-fashion-mnist") as info:
        load_fashion_mnist()
    assert str(tmp_path) in str(info.value)


def test_truncated_idx_file_is_a_clear_error(tmp_path):
    import gzip

    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (5).to_bytes(4, "big") + (2).to_bytes(4, "big") * 2 + b"\x00" * 7)
    with pytest.raises(UnigradError, match="truncated"):
        fashion_mnist.read_idx(tmp_path / "x.gz")


@pytest.mark.skipif(not fashion_mnist.DEFAULT_DIR.is_dir(), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_files(monkeypatch):
    monkeypatch.delenv("UNIGRAD_FASHION_MNIST", raising=False)
    _check_split(load_fashion_mnist(), 60000, 10000, (1, 28, 28))
