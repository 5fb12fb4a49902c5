"""JointPruning reconstruction (rdprune.jointpruning): FLOPs projection, gradient estimator,
analytic FLOPs vs FlopCounterMode, built networks, inherited weights, seeded search, bad input.
Everything is tiny and seeded (seconds per test on one CPU thread)."""
import numpy as np
import pytest
import torch

from rdprune import data as D
from rdprune import jointpruning as J
from rdprune import masks as M
from rdprune import models


def random_vectors(sp, n, seed):
    rng = np.random.default_rng(seed)
    return [rng.uniform(sp.lo, sp.hi) for _ in range(n)]


@pytest.mark.parametrize("name", ["resnet20", "resnet32"])
def test_projection_lands_within_one_percent_under_target(name):
    sp = J.space(name)
    rng = np.random.default_rng(0)
    combos = [("channel",), ("channel", "depth"), J.DIMS]
    for i, v in enumerate(random_vectors(sp, 150, seed=1)):
        target = rng.uniform(0.05, 1.0)
        p = J.project(name, v, target, combos[i % 3])
        ratio = J.flops(name, p) / (target * sp.full_macs)
        assert 0.99 <= ratio <= 1.0, (i, target, ratio)
        assert np.all(p >= sp.lo - 1e-9) and np.all(p <= sp.hi + 1e-9)
        cfg = J.decode(name, p)
        if "depth" not in combos[i % 3]:
            assert cfg.depths == (sp.n,) * 3
        if "resolution" not in combos[i % 3]:
            assert cfg.resolution == sp.full


def test_projection_of_full_target_is_the_full_network_and_infeasible_raises():
    sp = J.space("resnet20")
    assert J.flops("resnet20", J.project("resnet20", sp.lo, 1.0)) == sp.full_macs
    with pytest.raises(ValueError, match="below the smallest"):
        J.project("resnet20", sp.hi, 1e-4)


@pytest.mark.parametrize("seed", range(3))
def test_estimator_recovers_gradient_sign_of_a_quadratic(seed):
    gen = torch.Generator().manual_seed(seed)
    d = 6
    a = np.linspace(-1, 1, d)
    curv = np.linspace(0.5, 2.0, d)
    u0 = a + np.array([0.3, -0.4, 0.5, -0.3, 0.4, -0.5])

    def f(u):
        return float(np.sum(curv * (u - a) ** 2))

    true = 2 * curv * (u0 - a)
    g, losses = J.estimate_gradient(f, u0, 0.1, samples=256, generator=gen)
    assert losses.shape == (512,)
    assert np.array_equal(np.sign(g), np.sign(true))
    assert np.corrcoef(g, true)[0, 1] > 0.9
    # group normalisation: unit RMS within each group, signs unchanged
    groups = [np.arange(0, 4), np.arange(4, 6)]
    gn, _ = J.estimate_gradient(f, u0, np.full(d, 0.1), samples=256,
                                generator=torch.Generator().manual_seed(seed), groups=groups)
    for idx in groups:
        assert np.sqrt(np.mean(gn[idx] ** 2)) == pytest.approx(1.0)
    assert np.array_equal(np.sign(gn), np.sign(true))


@pytest.mark.parametrize("name,in_ch,size", [("resnet20", 1, 28), ("resnet32", 3, 32)])
def test_analytic_flops_equal_flop_counter(name, in_ch, size):
    sp = J.space(name, 10, in_ch, size)
    vectors = random_vectors(sp, 4, seed=2) + [sp.lo, sp.hi]
    for v in vectors:
        model = J.build(models.build(name, 10, in_ch, image_size=size), v)
        counted = M.module_flops(model, torch.zeros(1, in_ch, size, size))[""] // 2
        assert J.flops(name, v, 10, in_ch, size) == counted
    dense = models.build(name, 10, in_ch, image_size=size)
    assert sp.full_macs == sum(M.layer_flops(dense).values())


def test_built_network_has_chosen_channels_depth_and_runs():
    sp, dense = J.space("resnet20"), models.build("resnet20")
    assert J.space(dense) is sp  # the space read off the network equals the named one
    for v in random_vectors(sp, 3, seed=3):
        cfg = J.decode("resnet20", v)
        model = J.build(dense, v).eval()
        assert model.conv1.out_channels == cfg.stage_widths[0]
        cin = cfg.stage_widths[0]
        for s, layer in enumerate((model.layer1, model.layer2, model.layer3)):
            assert len(layer) == cfg.depths[s]
            for j, blk in enumerate(layer):
                assert blk.conv1.weight.shape[:2] == (cfg.inner_widths[s][j], cin)
                assert blk.conv2.weight.shape[:2] == (cfg.stage_widths[s], cfg.inner_widths[s][j])
                assert len(blk.shortcut) == (2 if (s > 0 and j == 0) else 0)
                cin = cfg.stage_widths[s]
        assert model.fc.in_features == cin
        out = model(torch.randn(2, 1, 28, 28))
        assert out.shape == (2, 10) and torch.isfinite(out).all()
        assert model.resolution == cfg.resolution and cfg.resolution % 4 == 0
        np.testing.assert_array_equal(sp.snap(model.vector), model.vector)


def test_inherit_reproduces_the_supernet_subnetwork():
    torch.manual_seed(0)
    net = J.Supernet(models.build("resnet20")).eval()
    sp = net.space
    calib = torch.randn(16, 1, 28, 28)
    x = torch.randn(4, 1, 28, 28)
    v = J.project("resnet20", random_vectors(sp, 1, seed=4)[0], 0.4)
    model = J.inherit(net, v, calib=calib)
    with torch.no_grad():
        want = net(torch.cat([calib, x]), J.decode("resnet20", v), k=len(calib))[len(calib):]
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)


def test_uniform_baseline():
    sp = J.space("resnet20")
    assert J.flops("resnet20", J.uniform("resnet20", 1.0)) == sp.full_macs
    v = J.uniform_for_flops("resnet20", 0.5)
    assert J.flops("resnet20", v) <= 0.5 * sp.full_macs
    cfg = J.decode("resnet20", v)
    assert cfg.depths == (3, 3, 3) and cfg.resolution == 28
    wider = J.uniform("resnet20", min(1.0, v[0] + 0.07))
    assert J.flops("resnet20", wider) > 0.5 * sp.full_macs


def _tiny_search(seed=0, **kw):
    loader, _ = D.loaders("fashion_mnist", 16, subset=20, seed=seed)
    torch.manual_seed(seed)
    return J.search(models.build("resnet20"), loader, flops_target=0.4, supernet_steps=5,
                    search_steps=2, samples=2, seed=seed, val_size=24, val_batch=16,
                    calib_size=8, progress=False, **kw)


@pytest.fixture
def one_thread():
    """Tiny convs run fastest on one thread on a shared CPU; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_search_is_seeded_and_meets_the_target(one_thread):
    v1, t1 = _tiny_search()
    v2, t2 = _tiny_search()
    np.testing.assert_array_equal(v1, v2)
    assert t1.equals(t2)
    assert {"iteration", "loss", "flops", "width", "depth", "resolution"} <= set(t1.columns)
    assert len(t1) == 2
    # the returned vector is the update with the lowest held-out loss (final supernet)
    assert t1["best"].sum() == 1 and np.isfinite(t1["val_loss"]).all()
    best = t1[t1["best"]].iloc[0]
    assert best["val_loss"] == t1["val_loss"].min()
    assert J.flops("resnet20", v1) == best["flops"]
    full = J.space("resnet20").full_macs
    assert 0.99 * 0.4 * full <= J.flops("resnet20", v1) <= 0.4 * full
    assert (t1.flops <= 0.4 * full).all()
    v3, t3 = _tiny_search(dims=("channel",))
    cfg = J.decode("resnet20", v3)
    assert cfg.depths == (3, 3, 3) and cfg.resolution == 28


def test_bad_input_raises():
    with pytest.raises(ValueError, match="supports"):
        J.flops("vgg16", np.zeros(16))
    loader, _ = D.loaders("fashion_mnist", 16, subset=20)
    with pytest.raises(ValueError, match="CIFAR-style ResNets.*mobilenet"):
        J.search(models.build("lenet5"), loader, progress=False)
    r20 = models.build("resnet20")
    for target in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            J.search(r20, loader, flops_target=target, progress=False)
        with pytest.raises(ValueError, match=r"\(0, 1\]"):
            J.project("resnet20", J.space("resnet20").hi, target)
    with pytest.raises(ValueError, match="dims"):
        J.search(r20, loader, dims=("channel", "kernel"), progress=False)
    with pytest.raises(ValueError, match="dims"):
        J.project("resnet20", J.space("resnet20").hi, 0.5, dims=())
    with pytest.raises(ValueError, match="16 finite entries"):
        J.build(r20, np.ones(5))
    with pytest.raises(ValueError, match="finite"):
        J.flops("resnet20", np.full(16, np.nan))


# ----------------------------------------------------------------------------- MobileNets
MOBILENETS = ["mobilenet_v1", "mobilenet_v2"]


def _width_targets(name, in_ch=1, size=28):
    """FLOPs fractions of the zoo's 0.75x / 0.5x / 0.25x width multipliers (the issue's targets)."""
    def macs(w):
        return sum(M.layer_flops(models.build(name, 10, in_ch, image_size=size, width=w)).values())
    return [macs(w) / macs(1.0) for w in (0.75, 0.5, 0.25)]


@pytest.mark.parametrize("name", MOBILENETS)
def test_mobilenet_projection_meets_every_target_within_one_percent(name):
    dense = models.build(name)
    sp = J.space(dense)
    rng = np.random.default_rng(5)
    combos = [("channel",), ("channel", "depth"), J.DIMS]
    targets = _width_targets(name) + list(rng.uniform(0.05, 1.0, 30))
    for i, target in enumerate(targets):
        dims = combos[i % 3]
        p = J.project(dense, rng.uniform(sp.lo, sp.hi), target, dims)
        ratio = J.flops(dense, p) / (target * sp.full_macs)
        assert 0.99 <= ratio <= 1.0, (i, target, ratio)
        cfg = J.decode(dense, p)
        if "depth" not in dims:
            assert cfg.depths == tuple(len(st) for st in sp.stages)
        if "resolution" not in dims:
            assert cfg.resolution == sp.full


@pytest.mark.parametrize("name,in_ch,size,width", [
    ("mobilenet_v1", 1, 28, 1.0), ("mobilenet_v2", 1, 28, 1.0), ("mobilenet_v1", 3, 32, 0.35),
    ("mobilenet_v2", 3, 32, 0.25)])
def test_mobilenet_space_flops_build_and_supernet_slice(name, in_ch, size, width):
    torch.manual_seed(0)
    dense = models.build(name, 10, in_ch, image_size=size, width=width)
    sp = J.space(dense)
    assert sp.full_macs == sum(M.layer_flops(dense).values())
    sizes = [len(st) for st in sp.stages]
    if width == 1.0:  # V2's stages are its (t, c, n, s) rows; V1's its runs of equal width
        assert sizes == ([1, 2, 3, 4, 3, 3, 1] if name == "mobilenet_v2" else [1, 2, 2, 6, 2])
        assert len(sp.inner_max) == (16 if name == "mobilenet_v2" else 0)
        assert not sp.stem_tied
    if width == 0.25:  # rounding makes the stem as wide as stage 1, whose first block adds it
        assert dense.features[1].use_res and sp.stem_tied and sizes[0] == 3
    net = J.Supernet(dense).eval()
    calib, x = torch.randn(16, in_ch, size, size), torch.randn(4, in_ch, size, size)
    for v in random_vectors(sp, 3, seed=6) + [sp.lo]:
        cfg = J.decode(dense, v)
        assert cfg.stem == cfg.stage_widths[0] or not sp.stem_tied
        small = J.build(dense, v)
        assert small.resolution == cfg.resolution
        counted = M.module_flops(small, torch.zeros(1, in_ch, size, size))[""] // 2
        assert J.flops(dense, v) == counted
        assert small.features[0][0].out_channels == cfg.stem
        kept = [n for n, _ in small.features.named_children()]
        assert len(kept) == 1 + (sum(cfg.depths) * (1 if name == "mobilenet_v2" else 2)) + \
            (name == "mobilenet_v2")
        # build = the supernet's slice: inherit copies it, outputs equal on a batch
        model = J.inherit(net, v, calib=calib)
        with torch.no_grad():
            want = net(torch.cat([calib, x]), cfg, k=len(calib))[len(calib):]
            torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-5)
    # all entries at their maxima: the dense network itself (its weights load, outputs equal)
    full = J.build(dense, sp.hi).eval()
    full.load_state_dict(dense.state_dict())
    dense.eval()
    with torch.no_grad():
        torch.testing.assert_close(full(x), dense(x), rtol=0, atol=0)


def test_mobilenet_width_multipliers_lie_in_the_space():
    """The zoo's 0.5x MobileNetV2 (the baseline of the comparison) is a point of the 1.0x space:
    same convs, same FLOPs (its stage widths are the leading slices of the 1.0x network's)."""
    dense, half = models.build("mobilenet_v2"), models.build("mobilenet_v2", width=0.5)
    sp = J.space(dense)
    ch = [half.features[0][0].out_channels]
    ch += [half.get_submodule(st[0].convs[-1].name).out_channels for st in sp.stages]
    ch += [half.get_submodule(b.convs[0].name).out_channels for st in sp.stages for b in st
           if b.expand]
    v = np.r_[np.asarray(ch) / sp.cmax, sp.hi[sp.nc:]]
    small = J.build(dense, v)
    shapes = [m.weight.shape for m in small.modules() if isinstance(m, torch.nn.Conv2d)]
    assert shapes == [m.weight.shape for m in half.modules() if isinstance(m, torch.nn.Conv2d)]
    assert J.flops(dense, v) == sum(M.layer_flops(half).values())


@pytest.mark.parametrize("name", MOBILENETS)
def test_mobilenet_search_is_seeded_and_meets_the_target(name, one_thread):
    loader, _ = D.loaders("fashion_mnist", 16, subset=20, seed=0)

    def run():
        torch.manual_seed(0)
        return J.search(models.build(name), loader, flops_target=0.3, supernet_steps=2,
                        search_steps=2, samples=2, seed=0, val_size=24, val_batch=16,
                        calib_size=8, progress=False)

    (v1, t1), (v2, t2) = run(), run()
    np.testing.assert_array_equal(v1, v2)
    assert t1.equals(t2)
    dense = models.build(name)
    full = J.space(dense).full_macs
    assert 0.99 * 0.3 * full <= J.flops(dense, v1) <= 0.3 * full


def test_mobilenet_bad_input_raises():
    with pytest.raises(ValueError, match="pass the network itself"):
        J.space("mobilenet_v2")
    odd = models.build("mobilenet_v1")
    odd.features[1][0] = torch.nn.Conv2d(32, 32, 3, 1, 1, groups=4, bias=False)
    with pytest.raises(ValueError, match="grouped convs"):
        J.space(odd)


@pytest.mark.parametrize("name", MOBILENETS)
def test_front_door_prunes_a_mobilenet(name, one_thread):
    import rdprune as rp
    loader, _ = D.loaders("fashion_mnist", 16, subset=20, seed=0)
    dense = models.build(name)
    calib = D.calibration("fashion_mnist", n=8, seed=0)
    net, record = rp.prune(dense, "jointpruning", 0.7, "flops", calib=calib, train_loader=loader,
                           supernet_steps=2, search_steps=1, samples=1, val_size=24,
                           val_batch=16, calib_size=8)
    assert isinstance(net, J.PrunedMobileNet) and not net.training
    assert 0.7 <= record["flops_reduction"] <= 0.7 + 0.01 * 0.3 + 1e-9
    assert record["flops"] == J.flops(dense, record["vector"])
    assert net(calib[:2]).shape == (2, 10)
    with pytest.raises(ValueError, match="budget='flops'"):
        rp.prune(dense, "jointpruning", 0.7, "params", calib=calib, train_loader=loader)
