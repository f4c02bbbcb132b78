import pickle

import numpy as np
import pytest
import torch

import nas
from nas import NASError


def test_mnist5k_is_embedded_and_split_by_seed():
    d = nas.get_dataset("mnist5k")
    assert (len(d.train), len(d.val)) == (4000, 1000)
    assert d.in_channels == 1 and d.resolution == 28 and d.num_classes == 10
    again = nas.get_dataset("mnist5k")
    assert torch.equal(again.val.y, d.val.y)
    other = nas.get_dataset("mnist5k", split_seed=1)
    assert not torch.equal(other.val.y, d.val.y)
    x, y = d.batch(d.train, slice(0, 8))
    assert x.shape == (8, 1, 28, 28) and abs(float(d.batch(d.train, slice(0, 4000))[0].mean())) < 1e-3


def test_mnist5k_clutter_moves_each_digit_over_fragments_of_others():
    plain = nas.get_dataset("mnist5k")
    clutter = nas.get_dataset("mnist5k_clutter")
    assert (len(clutter.train), len(clutter.val), clutter.resolution, clutter.num_classes) == (4000, 1000, 28, 10)
    assert torch.equal(clutter.val.y, plain.val.y)  # the same digits in the same split
    assert torch.equal(nas.get_dataset("mnist5k_clutter").train.x, clutter.train.x)  # same seed, same images
    assert not torch.equal(nas.get_dataset("mnist5k_clutter", seed=1).train.x, clutter.train.x)
    # without shift and fragments it is mnist5k itself
    assert torch.equal(nas.get_dataset("mnist5k_clutter", shift=0, pieces=0).train.x, plain.train.x)
    # a shifted digit keeps its ink (up to what leaves the frame); fragments only add ink
    shifted = nas.get_dataset("mnist5k_clutter", pieces=0)
    kept = shifted.train.x.float().sum((1, 2, 3)) / plain.train.x.float().sum((1, 2, 3))
    assert float(kept.min()) > 0.8 and float(kept.max()) <= 1 + 1e-6
    assert bool((clutter.train.x >= shifted.train.x).all()) and not torch.equal(clutter.train.x, shifted.train.x)
    assert not torch.equal(shifted.train.x, plain.train.x)
    with pytest.raises(NASError, match="piece_size"):
        nas.get_dataset("mnist5k_clutter", piece_size=40)


def test_digits_and_adaptation_to_model_input():
    d = nas.get_dataset("digits")
    assert len(d.train) + len(d.val) == 1797
    x, _ = d.batch(d.train, slice(0, 4), input_shape=(3, 16, 16))
    assert x.shape == (4, 3, 16, 16)
    with pytest.raises(NASError, match="set space.in_channels=1"):
        d.check_model_input((2, 8, 8), 10)
    with pytest.raises(NASError, match="set space.num_classes=10"):
        d.check_model_input((1, 8, 8), 5)


def write_fake_cifar10(folder, n=20):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}
        with open(folder / name, "wb") as fh:
            pickle.dump(batch, fh)


def test_cifar10_from_local_folder(tmp_path):
    write_fake_cifar10(tmp_path / "cifar-10-batches-py")
    d = nas.get_dataset("cifar10", path=str(tmp_path))  # the parent folder works too
    assert len(d.train) + len(d.val) == 100 and len(d.test) == 20
    assert d.train.x.shape[1:] == (3, 32, 32)


def test_cifar_missing_folder_errors(tmp_path):
    with pytest.raises(NASError, match="does not exist"):
        nas.get_dataset("cifar10", path=str(tmp_path / "nope"))
    with pytest.raises(NASError, match="lacks data_batch_1"):
        nas.get_dataset("cifar10", path=str(tmp_path))
    with pytest.raises(NASError, match="needs data.path"):
        nas.get_dataset("cifar100")


def test_synthetic_is_learnable_and_training_is_deterministic():
    data = nas.get_dataset("synthetic", n=256, num_classes=4, resolution=8)
    space = nas.get_space("mbconv", resolution=8, num_classes=4, in_channels=3, stem_stride=1)
    arch = space.sample(np.random.default_rng(0))
    ev = nas.get_evaluator("train", epochs=3, batch_size=32, device="cpu", lr=0.05)
    ev.bind(space, data)
    a, b = ev.evaluate(space, arch), ev.evaluate(space, arch)
    assert a.quality == b.quality and a.metrics["val_loss"] == b.metrics["val_loss"]
    assert a.quality > 0.5  # chance is 0.25


def test_mixed_precision_training_learns_and_is_deterministic():
    data = nas.get_dataset("synthetic", n=256, num_classes=4, resolution=8)
    space = nas.get_space("mbconv", resolution=8, num_classes=4, in_channels=3, stem_stride=1)
    arch = space.sample(np.random.default_rng(0))
    scores = {}
    for precision in ("float32", "bfloat16"):
        ev = nas.get_evaluator("train", epochs=3, batch_size=32, device="cpu", lr=0.05, precision=precision)
        ev.bind(space, data)
        scores[precision] = ev.evaluate(space, arch), ev.evaluate(space, arch)
    a, b = scores["bfloat16"]
    assert a.quality == b.quality and a.metrics["val_loss"] == b.metrics["val_loss"] and a.quality > 0.5
    # the forward pass really ran in bfloat16: the losses differ from float32's
    assert a.metrics["train_loss"] != scores["float32"][0].metrics["train_loss"]
    assert all(p.dtype == torch.float32 for p in a.model.parameters())  # weights stay float32


def test_batchnorm_recalibration_samples_the_whole_training_split_even_one_stored_by_class():
    # mnist5k's training split is stored by class, as many folders are: statistics from
    # its first batches would describe one or two classes, and eval-mode accuracy dropped
    from torch import nn

    from nas.training.data import ImageDataset
    from nas.training.train import recalibrate_batchnorm

    mnist = nas.get_dataset("mnist5k")
    assert (mnist.train.y[:256] == mnist.train.y[0]).all()  # the premise
    # every image of class k is the constant k: normalised, the classes' values have mean 0,
    # variance 1, and any one class alone has variance 0
    labels = np.repeat(np.arange(4), 100)
    images = np.broadcast_to(labels[:, None, None, None], (400, 1, 8, 8)).astype(np.float32)
    data = ImageDataset("by_class", images, labels, 4, val_fraction=0.2, split_seed=0)
    assert (np.diff(data.train.y.numpy()) >= 0).all()
    bn = nn.BatchNorm2d(1)
    recalibrate_batchnorm(bn, data, (1, 8, 8), 16, "cpu", max_batches=5)  # 80 of 320 examples
    assert abs(bn.running_mean.item()) < 0.3 and bn.running_var.item() > 0.7  # the first 80: -1.3 and 0
    again = nn.BatchNorm2d(1)
    recalibrate_batchnorm(again, data, (1, 8, 8), 16, "cpu", max_batches=5)
    assert torch.equal(again.running_mean, bn.running_mean)  # the same sample every call


def test_train_evaluator_config_errors():
    with pytest.raises(NASError, match="unknown optimizer 'lbfgs'"):
        nas.get_evaluator("train", optimizer="lbfgs")
    with pytest.raises(NASError, match="epochs must be >= 1"):
        nas.get_evaluator("train", epochs=0)
    with pytest.raises(NASError, match="precision 'int8' is not one of 'float32', 'bfloat16', 'float16'"):
        nas.get_evaluator("train", precision="int8")
    with pytest.raises(NASError, match="float16 is mixed precision with loss scaling on a CUDA device; .* bfloat16"):
        nas.get_evaluator("train", precision="float16", device="cpu")


# ---------------------------------------------------------------------------- image folders, torch Datasets

def write_image_folder(root, classes=3, per_class=8, size=12, mode="RGB", split=False, seed=0):
    """PNG files in class folders (``root/<class>/`` or ``root/train|val/<class>/``): each
    class a colour (or grey level) plus noise, so that a small network can tell them apart."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        for i in range(per_class):
            folder = root / (("val" if i % 4 == 0 else "train") if split else "") / f"class_{c}"
            folder.mkdir(parents=True, exist_ok=True)
            base = np.full((size, size, 3), 40 + 80 * c, dtype=np.float64)
            base[..., c % 3] += 60
            pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, "RGB")
            (image.convert("L") if mode == "L" else image).save(folder / f"{i}.png")


def test_imagefolder_reads_class_folders_in_memory_or_from_disk(tmp_path):
    write_image_folder(tmp_path / "flat", per_class=10)
    data = nas.get_dataset("imagefolder", path=str(tmp_path / "flat"), split_seed=1)
    assert (data.num_classes, data.in_channels, data.resolution) == (3, 3, 12)
    assert len(data.train) + len(data.val) == 30 and len(data.val) == 6
    assert isinstance(data.train.x, torch.Tensor)  # small: decoded once, held in memory
    streamed = nas.get_dataset("imagefolder", path=str(tmp_path / "flat"), split_seed=1, memory_limit_mb=0)
    from nas.training.data import LazyImages

    assert isinstance(streamed.train.x, LazyImages)  # read from disk per batch
    idx = torch.tensor([0, 5, 7])
    for split in ("train", "val"):
        a, b = getattr(data, split), getattr(streamed, split)
        assert torch.equal(a.y, b.y) and torch.equal(a.x[idx if split == "train" else idx[:2]],
                                                    b.x[idx if split == "train" else idx[:2]])
    xa, ya = data.batch(data.train, idx, (3, 16, 16))
    xb, yb = streamed.batch(streamed.train, idx, (3, 16, 16))
    assert xa.shape == (3, 3, 16, 16) and torch.allclose(xa, xb) and torch.equal(ya, yb)
    # HANT's held-out examples stay lazy
    from nas.training.layerwise import hold_out

    rest, held = hold_out(streamed, 4, seed=0)
    assert isinstance(held.x, LazyImages) and len(held) == 4 and len(rest.train) == len(streamed.train) - 4
    # train/ and val/ folders are used as given; grey images stay one channel; a resolution resizes
    write_image_folder(tmp_path / "split", split=True, mode="L", size=10)
    given = nas.get_dataset("imagefolder", path=str(tmp_path / "split"), resolution=8)
    assert (len(given.train), len(given.val), given.in_channels, given.resolution) == (18, 6, 1, 8)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(NASError, match="imagefolder needs data.path"):
        nas.get_dataset("imagefolder")
    with pytest.raises(NASError, match="does not exist or is not a folder"):
        nas.get_dataset("imagefolder", path=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NASError, match="holds no class folders"):
        nas.get_dataset("imagefolder", path=str(tmp_path / "empty"))
    write_image_folder(tmp_path / "bad", classes=2, per_class=4)
    (tmp_path / "bad" / "class_1" / "9.png").write_bytes(b"not a png")
    for limit in (1024, 0):  # decoded at once, or read while sampling the normalisation statistics
        with pytest.raises(NASError, match=r"image .*9.png' cannot be read \(UnidentifiedImageError"):
            nas.get_dataset("imagefolder", path=str(tmp_path / "bad"), memory_limit_mb=limit)
    write_image_folder(tmp_path / "extra", classes=2, per_class=4, split=True)
    (tmp_path / "extra" / "val" / "class_9").mkdir()
    (tmp_path / "extra" / "val" / "class_9" / "0.png").write_bytes((tmp_path / "extra" / "val" / "class_1" / "0.png").read_bytes())
    with pytest.raises(NASError, match="has classes the training folder lacks: class_9"):
        nas.get_dataset("imagefolder", path=str(tmp_path / "extra"))


class Patterns(torch.utils.data.Dataset):
    """A user's own Dataset: (C, H, W) uint8 tensors and integer labels, no ``targets``."""

    def __init__(self, n, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.arange(n) % 3
        self.images = (self.labels[:, None, None, None] * 80 + torch.randint(0, 40, (n, 3, 8, 8), generator=g))
        self.images = self.images.to(torch.uint8)
        self.reads = 0

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        self.reads += 1
        return self.images[i], int(self.labels[i])


def test_a_torch_dataset_or_a_pair_searches_from_python():
    from nas.training.data import LazyImages, as_image_dataset

    whole = Patterns(48)
    data = as_image_dataset(whole, split_seed=0)
    assert isinstance(data.train.x, LazyImages) and (data.num_classes, data.in_channels, data.resolution) == (3, 3, 8)
    assert len(data.train) + len(data.val) == 48 and data.scale == pytest.approx(1 / 255)
    reads = whole.reads
    x, y = data.batch(data.train, torch.tensor([0, 1]))
    assert whole.reads == reads + 2 and x.dtype == torch.float32 and y.tolist() == data.train.y[:2].tolist()
    space = nas.get_space("mbconv", resolution=8, num_classes=3, in_channels=3)
    searcher = nas.get_searcher("random", n_evals=2)
    evaluator = nas.get_evaluator("train", epochs=1, batch_size=16)
    result = nas.search(space, searcher, evaluator=evaluator, data=whole, seed=0)
    again = nas.search(space, nas.get_searcher("random", n_evals=2), evaluator=nas.get_evaluator(
        "train", epochs=1, batch_size=16), data=whole, seed=0)
    assert result.n_evals == 2 and 0 <= result.best.quality <= 1
    assert [e.quality for e in result.history] == [e.quality for e in again.history]  # same seed, same result
    pair = nas.search(space, nas.get_searcher("random", n_evals=1), evaluator=nas.get_evaluator(
        "train", epochs=1, batch_size=16), data=(Patterns(32, seed=1), Patterns(12, seed=2)))
    assert pair.n_evals == 1
    with pytest.raises(NASError, match="data must be a data set's name, an ImageDataset, a torch.utils.data.Dataset"):
        as_image_dataset([1, 2, 3])


def test_cli_search_on_an_image_folder(tmp_path, cli_env):
    from conftest import run_cli

    write_image_folder(tmp_path / "images", classes=3, per_class=12, size=10, split=True)
    out = run_cli(["data=imagefolder", f"data.path={tmp_path / 'images'}", "space=mbconv", "searcher=random",
                   "searcher.n_evals=2", "evaluator.epochs=1", "target=macs", "progress=false", "run_name=f"],
                  tmp_path, cli_env)
    assert out.returncode == 0, out.stderr
    import json

    result = json.loads((tmp_path / "runs" / "f" / "result.json").read_text())
    assert result["n_evals"] == 2 and 0 <= result["best"]["quality"] <= 1
    saved = nas.load(tmp_path / "runs" / "f")  # the space took resolution, channels and classes from the images
    assert (saved.space.resolution, saved.space.in_channels, saved.space.num_classes) == (10, 3, 3)
    assert saved.model(torch.zeros(1, 3, 10, 10)).shape == (1, 3)
    bad = run_cli(["data=imagefolder", "space=mbconv", "searcher=random", "run_name=g"], tmp_path, cli_env)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "imagefolder needs data.path" in bad.stderr


def test_devices_are_chosen_and_refused_in_one_line():
    from nas.latency import HarnessSettings
    from nas.training.train import resolve_device

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert nas.get_evaluator("train", device="auto").recipe.device.type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(NASError, match="unknown device 'tpu'; use 'auto', 'cpu' or 'cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():  # CI: asking for the GPU is one line, for training and for latency
        with pytest.raises(NASError, match="device 'cuda' asked for, but CUDA is not available here"):
            nas.get_evaluator("train", device="cuda")
        with pytest.raises(NASError, match="latency device 'cuda:0' asked for, but CUDA is not available here"):
            HarnessSettings(device="cuda:0")
