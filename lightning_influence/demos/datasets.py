"""Offline image datasets as ``(train, val, test)`` TensorDatasets of plain ``(x, y)``.

- scikit-learn digits: always available (embedded in scikit-learn), the default for tests
  and the demo.
- Fashion-MNIST: read from the Debian package ``dataset-fashion-mnist`` or from torchvision's
  raw layout; downloaded only when ``download=True`` is asked for explicitly.

Images are float32 ``[N, C, H, W]`` scaled to ``[0, 1]``; labels int64. Splits are stratified
and deterministic for a given seed. Wrap a split in
:class:`lightning_influence.data.batches.IndexedDataset` for ``(x, y, idx)`` batches.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import TensorDataset

__all__ = [
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEBIAN_DIR",
    "digits_splits",
    "fashion_mnist_splits",
    "read_idx",
]

#: Where the Debian package ``dataset-fashion-mnist`` puts its gzipped IDX files.
FASHION_MNIST_DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_FASHION_FILES = {
    "train_x": "train-images-idx3-ubyte",
    "train_y": "train-labels-idx1-ubyte",
    "test_x": "t10k-images-idx3-ubyte",
    "test_y": "t10k-labels-idx1-ubyte",
}

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/ format).
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


#: The largest IDX payload :func:`read_idx` reads (the full Fashion-MNIST is 47 MB).
MAX_IDX_BYTES = 1 << 30


def read_idx(path: str | os.PathLike[str], max_bytes: int = MAX_IDX_BYTES) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected from its first bytes) into a numpy array.

    A gzipped file is decompressed as a stream and never past the size its header states,
    so a hostile ``.gz`` (a decompression bomb) cannot fill the memory.

    Args:
        path: the file.
        max_bytes: the largest data size accepted (the header's shape times the item size).

    Raises ``ValueError`` on a bad header, a size above ``max_bytes``, or a size that does not
    match the header.
    """
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
        magic = f.read(4)
        if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
            raise ValueError(f"{path}: not an IDX file (bad magic number).")
        code, ndim = magic[2], magic[3]
        if code not in _IDX_DTYPES:
            raise ValueError(f"{path}: unknown IDX data type code 0x{code:02x}.")
        dims = f.read(4 * ndim)
        if len(dims) < 4 * ndim:
            raise ValueError(f"{path}: truncated IDX header.")
        shape = struct.unpack(f">{ndim}I", dims)
        dtype = _IDX_DTYPES[code]
        expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if expected > max_bytes:
            raise ValueError(
                f"{path}: IDX header says shape {shape} ({expected} bytes of data), more than "
                f"max_bytes={max_bytes}; pass a larger max_bytes if the file is trusted."
            )
        data = f.read(expected + 1)  # one byte more: a longer file is an error too
    if len(data) != expected:
        held = f"{len(data)}" if len(data) <= expected else f"more than {expected}"
        raise ValueError(
            f"{path}: IDX header says shape {shape} ({expected} bytes of data) but the file "
            f"holds {held}."
        )
    arr = np.frombuffer(data, dtype=dtype).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))


def _stratified_split(
    labels: np.ndarray, n_out: int, seed: int, pool: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``pool`` (default: all indices) into (kept, taken-out of size n_out), stratified."""
    idx = np.arange(len(labels)) if pool is None else pool
    if n_out <= 0:
        return np.sort(idx), np.empty(0, dtype=np.int64)
    kept, out = train_test_split(idx, test_size=n_out, random_state=seed, stratify=labels[idx])
    return np.sort(kept), np.sort(out)


def _check_fraction(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}.")


def digits_splits(
    seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.2
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """scikit-learn digits (1,797 images, 8x8, 10 classes) as (train, val, test).

    Images ``[N, 1, 8, 8]`` float32 in ``[0, 1]`` (raw 0..16 divided by 16). Fractions are of
    the whole set (defaults: 1168 / 270 / 359); both splits are stratified by class, so every
    class is in every split, and the same seed always gives the same split.
    """
    from sklearn.datasets import load_digits

    _check_fraction("val_fraction", val_fraction)
    _check_fraction("test_fraction", test_fraction)
    if val_fraction + test_fraction >= 1.0:
        raise ValueError("val_fraction + test_fraction must be < 1.")
    data = load_digits()
    x = torch.from_numpy((data.images / 16.0).astype(np.float32)).unsqueeze(1)
    y_np = data.target.astype(np.int64)
    y = torch.from_numpy(y_np)
    n = len(y_np)
    rest, test_idx = _stratified_split(y_np, round(test_fraction * n), seed)
    train_idx, val_idx = _stratified_split(y_np, round(val_fraction * n), seed, pool=rest)
    return tuple(  # type: ignore[return-value]
        TensorDataset(x[torch.from_numpy(i)], y[torch.from_numpy(i)])
        for i in (train_idx, val_idx, test_idx)
    )


def _find_fashion_dir(data_dir: Path | None) -> tuple[Path | None, list[Path]]:
    """First folder holding all four IDX files (each ``.gz`` or not); also the folders tried."""
    if data_dir is None:
        candidates = [FASHION_MNIST_DEBIAN_DIR]
    else:
        candidates = [data_dir, data_dir / "FashionMNIST" / "raw", data_dir / "raw"]
    for folder in candidates:
        if all(_find_file(folder, name) is not None for name in _FASHION_FILES.values()):
            return folder, candidates
    return None, candidates


def _find_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _missing_fashion_error(candidates: list[Path]) -> FileNotFoundError:
    tried = ", ".join(str(c) for c in candidates)
    return FileNotFoundError(
        "Fashion-MNIST not found (looked for train-images-idx3-ubyte[.gz], "
        f"train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] "
        f"in: {tried}). Get it offline with `sudo apt-get install dataset-fashion-mnist` "
        f"(files go to {FASHION_MNIST_DEBIAN_DIR}), or point --data-dir (data_dir=) at a folder "
        "in torchvision's layout (<dir>/FashionMNIST/raw/), or pass --download (download=True) "
        "to fetch it with torchvision's downloader."
    )


def _to_images(raw: np.ndarray, pad_to_32: bool, rgb: bool) -> torch.Tensor:
    x = torch.from_numpy(raw).unsqueeze(1)  # uint8 [N, 1, 28, 28]
    if pad_to_32:
        x = torch.nn.functional.pad(x, (2, 2, 2, 2))
    x = x.to(torch.float32).div_(255.0)
    if rgb:
        x = x.expand(-1, 3, -1, -1).contiguous()
    return x


def fashion_mnist_splits(
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    val_fraction: float = 0.1,
    download: bool = False,
    pad_to_32: bool = False,
    rgb: bool = False,
    max_train_samples: int | None = None,
) -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """Fashion-MNIST (60,000 + 10,000, 28x28, 10 classes) as (train, val, test).

    Reads ``data_dir`` (the folder with the IDX files, or torchvision's root with
    ``FashionMNIST/raw/`` inside), by default the Debian package's folder
    ``/usr/share/datasets/fashion-mnist/``. The validation split (``val_fraction`` of the 60,000
    training images, stratified) is carved from the training set; the official 10,000 are the
    test set. ``pad_to_32`` zero-pads to 32x32 and ``rgb`` repeats the channel three times, for
    CIFAR-shaped models. ``max_train_samples`` keeps a stratified subset of the training split
    (for quick CPU runs). Nothing is downloaded unless ``download=True``, which uses
    torchvision's downloader into ``data_dir`` (required then).
    """
    _check_fraction("val_fraction", val_fraction)
    root = Path(data_dir).expanduser() if data_dir is not None else None
    folder, candidates = _find_fashion_dir(root)
    if folder is None and download:
        if root is None:
            raise ValueError("download=True needs data_dir (where to put the files).")
        from torchvision.datasets import FashionMNIST

        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
        folder, candidates = _find_fashion_dir(root)
    if folder is None:
        raise _missing_fashion_error(candidates)

    arrays = {k: read_idx(_find_file(folder, name)) for k, name in _FASHION_FILES.items()}  # type: ignore[arg-type]
    for split in ("train", "test"):
        xs, ys = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if xs.ndim != 3 or ys.ndim != 1 or len(xs) != len(ys):
            raise ValueError(
                f"Fashion-MNIST {split} files in {folder} have inconsistent shapes "
                f"{xs.shape} and {ys.shape}."
            )
    y_train = arrays["train_y"].astype(np.int64)
    train_idx, val_idx = _stratified_split(y_train, round(val_fraction * len(y_train)), seed)
    if max_train_samples is not None and max_train_samples < len(train_idx):
        _, train_idx = _stratified_split(y_train, max_train_samples, seed, pool=train_idx)

    def make(xs: np.ndarray, ys: np.ndarray) -> TensorDataset:
        return TensorDataset(_to_images(xs, pad_to_32, rgb), torch.from_numpy(ys.astype(np.int64)))

    return (
        make(arrays["train_x"][train_idx], y_train[train_idx]),
        make(arrays["train_x"][val_idx], y_train[val_idx]),
        make(arrays["test_x"], arrays["test_y"]),
    )
