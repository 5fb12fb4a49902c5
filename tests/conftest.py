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


@pytest.fixture(scope="module")
def env_threads():
    """Torch threads as OMP_NUM_THREADS says (if set) for a module, restored afterwards."""
    import os

    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", old)))
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def small_search():
    """The smallest budget of each allocator that searches (evo, rd+evo: generations; atp: β
    trials), for tests that run every registered allocator on large models: what they check
    (targets met, refusals) holds at any budget."""
    return {"evo": dict(generations=1, offspring=2), "rd+evo": dict(generations=1, offspring=2),
            "atp": dict(trials=2)}
