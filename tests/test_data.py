import gzip

import pytest
import torch

import rdprune as rp
from rdprune import data as D


def test_calibration_is_deterministic_and_from_training_split():
    a = rp.data.calibration("fashion_mnist", n=128, seed=3)
    b = rp.data.calibration("fashion_mnist", n=128, seed=3)
    assert a.shape == (128, 1, 28, 28) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, rp.data.calibration("fashion_mnist", n=128, seed=4))
    train_x, _ = D.tensors("fashion_mnist", "train")
    assert any(torch.equal(a[0], train_x[i]) for i in range(len(train_x) // 128 + 1))


def test_test_time_transform_is_normalisation_only():
    x, y = D.tensors("fashion_mnist", "test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert abs(float(D.tensors("fashion_mnist", "train")[0].mean())) < 0.01


def test_synthetic_calibration():
    s = rp.data.calibration("synthetic", n=64, seed=0, shape=(3, 32, 32))
    assert s.shape == (64, 3, 32, 32)
    assert torch.equal(s, rp.data.calibration("synthetic", n=64, seed=0, shape=(3, 32, 32)))
    assert abs(float(s.std()) - 1) < 0.05


def test_loaders_cover_the_dataset():
    train, test = rp.data.loaders("fashion_mnist", batch_size=1000)
    assert sum(len(y) for _, y in test) == 10000
    assert len(train) == 60


@pytest.mark.parametrize("bad", ["mnist", "", "CIFAR10"])
def test_unknown_dataset(bad):
    with pytest.raises(ValueError, match="fashion_mnist"):
        rp.data.calibration(bad, n=4)


def test_bad_calibration_size():
    with pytest.raises(ValueError, match="positive"):
        rp.data.calibration("fashion_mnist", n=0)


def test_missing_data_offline_names_three_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv("RDPRUNE_DATA", str(tmp_path))
    monkeypatch.setattr(D, "DEBIAN_FMNIST", tmp_path / "nowhere")
    import torchvision.datasets

    def offline(*a, **k):
        raise RuntimeError("no internet")
    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    monkeypatch.setattr(D, "_TENSOR_CACHE", {})
    with pytest.raises(FileNotFoundError) as err:
        D.tensors("fashion_mnist", "test")
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "internet" in msg
    assert str(tmp_path / "fashion_mnist") in msg
    from rdprune import reproduce  # the notebook runner skips with the same folders named
    assert D.local_fashion_mnist() is None
    assert "apt-get install dataset-fashion-mnist" in reproduce.dataset_problem("fashion_mnist")


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 8, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2 + b"\0" * 100)
    with pytest.raises(ValueError, match="truncated or corrupt"):
        D._read_idx(path)
