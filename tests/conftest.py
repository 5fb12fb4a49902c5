import pytest


@pytest.fixture(scope="session")
def lenet():
    """A LeNet-5 trained on Fashion-MNIST with the quick recipe (cached under data/)."""
    import rdprune as rp
    return rp.train.pretrained("lenet5", "fashion_mnist", "quick", seed=0, progress=False,
                               verbose=False)


@pytest.fixture(scope="session")
def calib():
    import rdprune as rp
    return rp.data.calibration("fashion_mnist", n=256, seed=0)
