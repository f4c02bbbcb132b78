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


def test_train_evaluator_config_errors():
    with pytest.raises(NASError, match="unknown optimizer 'lbfgs'"):
        nas.get_evaluator("train", optimizer="lbfgs")
    with pytest.raises(NASError, match="epochs must be >= 1"):
        nas.get_evaluator("train", epochs=0)
