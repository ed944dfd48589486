"""Offline datasets: digits splits, the IDX reader, Fashion-MNIST discovery and errors."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_influence.demos.datasets import (
    FASHION_MNIST_DEBIAN_DIR,
    digits_splits,
    fashion_mnist_splits,
    read_idx,
)


def _write_idx(path: Path, arr: np.ndarray, code: int, compress: bool) -> None:
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    big = arr.astype(arr.dtype.newbyteorder(">"))
    data = header + big.tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def _fake_fashion(folder: Path, n_train: int = 40, n_test: int = 10) -> None:
    """Tiny Fashion-MNIST-shaped IDX files (4 of each class in train)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", images, 0x08, True)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", labels, 0x08, False)


def test_digits_shapes_types_and_sizes() -> None:
    train, val, test = digits_splits()
    assert [len(s) for s in (train, val, test)] == [1168, 270, 359]
    x, y = train.tensors
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    for split in (train, val, test):  # stratified: every class everywhere
        assert set(split.tensors[1].tolist()) == set(range(10))


def test_digits_splits_deterministic() -> None:
    a, b = digits_splits(seed=0), digits_splits(seed=0)
    for s, t in zip(a, b, strict=True):
        assert torch.equal(s.tensors[0], t.tensors[0]) and torch.equal(s.tensors[1], t.tensors[1])
    c = digits_splits(seed=1)
    assert not torch.equal(a[0].tensors[0], c[0].tensors[0])


def test_digits_split_is_a_partition() -> None:
    """Disjoint and complete: the splits' multiset of images equals the full set's."""
    from sklearn.datasets import load_digits

    full = torch.from_numpy((load_digits().images / 16.0).astype(np.float32)).reshape(1797, -1)
    splits = torch.cat([s.tensors[0].reshape(len(s), -1) for s in digits_splits()])
    key = lambda t: sorted(map(tuple, t.tolist()))  # noqa: E731
    assert key(full) == key(splits)


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    ("dtype", "code"), [(np.uint8, 0x08), (np.int32, 0x0C), (np.float32, 0x0D)]
)
def test_read_idx_roundtrip(tmp_path: Path, compress: bool, dtype: type, code: int) -> None:
    arr = (np.arange(2 * 3 * 4) - (0 if dtype == np.uint8 else 7)).astype(dtype).reshape(2, 3, 4)
    path = tmp_path / "a.idx"
    _write_idx(path, arr, code, compress)
    out = read_idx(path)
    assert out.shape == arr.shape and out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, arr)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="magic"):
        read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(bytes([0, 0, 0x08, 1]) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(ValueError, match="holds 3"):
        read_idx(short)


def test_fashion_from_torchvision_layout(tmp_path: Path) -> None:
    _fake_fashion(tmp_path / "FashionMNIST" / "raw")
    train, val, test = fashion_mnist_splits(tmp_path, val_fraction=0.25)
    assert (len(train), len(val), len(test)) == (30, 10, 10)
    assert train.tensors[0].shape[1:] == (1, 28, 28) and train.tensors[0].max() <= 1.0
    assert set(val.tensors[1].tolist()) == set(range(10))
    train, _, _ = fashion_mnist_splits(tmp_path, val_fraction=0.25, pad_to_32=True, rgb=True)
    x = train.tensors[0]
    assert x.shape[1:] == (3, 32, 32)
    assert torch.equal(x[:, 0], x[:, 2]) and float(x[:, :, :2].abs().max()) == 0.0


def test_fashion_missing_says_how_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist") as err:
        fashion_mnist_splits(tmp_path / "nowhere")
    assert "--data-dir" in str(err.value) and "--download" in str(err.value)


@pytest.mark.skipif(
    not (FASHION_MNIST_DEBIAN_DIR / "train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed "
    "(apt-get install dataset-fashion-mnist); not needed for the rest of the suite",
)
def test_fashion_debian_package() -> None:
    train, val, test = fashion_mnist_splits(max_train_samples=1000)
    assert (len(train), len(val), len(test)) == (1000, 6000, 10000)
    assert torch.bincount(train.tensors[1]).tolist() == [100] * 10
    assert test.tensors[0].shape[1:] == (1, 28, 28)
