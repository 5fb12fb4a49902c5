"""The EvoPress-style search (rdprune.core.evo): never worse than its start on its own fitness,
budget-exact offspring, deterministic with a seed, rd+evo starting from RD's DP."""
import numpy as np
import pytest
import torch

import rdprune as rp
from rdprune.core import evo
from rdprune.core import masks as M


@pytest.fixture(scope="module")
def lenet():
    torch.manual_seed(0)
    return rp.models.build("lenet5", 10, 1, image_size=28), torch.randn(48, 1, 28, 28)


@pytest.mark.parametrize("budget", ["params", "flops"])
def test_never_worse_than_its_start_and_meets_the_budget(lenet, budget):
    model, x = lenet
    start = rp.allocate("uniform", model, 0.8, budget)
    s = evo.search(model, x, start, 0.8, budget, generations=6, offspring=6, seed=1)
    assert np.all(np.diff(s.trace.fitness) <= 0)
    assert s.fitness <= s.start_fitness
    measured = rp.distortion.distortion(model, M.apply(M.clone(model), s.amounts), x)
    assert measured == pytest.approx(s.fitness, rel=1e-6)
    layers = rp.allocation.Layers(model, budget)
    assert layers.removed(s.amounts) >= layers.need(0.8) - 1e-6
    assert s.candidates > 0 and s.passes > 0 and s.seconds > 0


def test_deterministic_with_a_seed(lenet):
    model, x = lenet
    start = rp.allocate("uniform", model, 0.7)
    a = evo.search(model, x, start, 0.7, generations=3, offspring=4, seed=5).amounts
    b = evo.search(model, x, start, 0.7, generations=3, offspring=4, seed=5).amounts
    assert a == b


def test_rd_evo_starts_from_rd(lenet):
    model, x = lenet
    curves = rp.rd.curves(model, x, grid=11, cache=False, progress=False)
    rd = rp.allocate("rd", model, 0.8, curves=curves)
    same = rp.allocate("rd+evo", model, 0.8, curves=curves, calib=x, generations=0)
    assert same == rd
    net, record = rp.prune(model, "rd+evo", 0.8, calib=x, curves=curves, generations=2,
                           offspring=3)
    assert M.sparsity(net) >= 0.8 - 1e-9


def test_bad_stages_are_refused_before_work(lenet):
    model, x = lenet
    start = rp.allocate("uniform", model, 0.5)
    with pytest.raises(ValueError, match="last stage keeps 1"):
        evo.search(model, x, start, 0.5, survivors=(4, 2))
    with pytest.raises(ValueError, match="calibration samples"):
        evo.search(model, x, start, 0.5, survivors=(4, 1), samples=(10, 1000))
