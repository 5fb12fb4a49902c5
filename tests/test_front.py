"""``rp.prune``: every method through one front door on a trained ResNet-20 at 50 % FLOPs removed,
and the shared evaluation helper."""
import copy

import pytest
import torch

import rdprune as rp
from rdprune import masks as M
from rdprune import structured as S

pytestmark = pytest.mark.slow
TARGET = 0.5
MASKS = ["global", "uniform", "uniform_plus", "erk", "lamp", "rd"]
ALL = MASKS + ["rd+refine", "rd_filter", "HBGS", "HBGS-B", "HBGTS", "HBGTS-B", "jointpruning",
               "uniform_width", "l1_filter"]


@pytest.fixture(scope="module")
def setting():
    """The ResNet-20 the notebook tests use (smoke recipe: trained for seconds; the targets, not
    the accuracy, are what this file checks), 32 calibration images and a small training loader."""
    model = rp.train.pretrained("resnet20", "fashion_mnist", "smoke", seed=0, progress=False,
                                verbose=False)
    calib = rp.data.calibration("fashion_mnist", n=32, seed=0)
    loader, test_loader = rp.data.loaders("fashion_mnist", 32, subset=40, seed=0)
    return model, calib, loader, test_loader


def options(method, loader, calib):
    small = {"rd": dict(grid=6), "rd+refine": dict(grid=6, refine=1),
             "rd_filter": dict(grid=5), "jointpruning": dict(
                 train_loader=loader, supernet_steps=4, search_steps=2, samples=2, val_size=32,
                 val_batch=16, calib_size=8), **{m: dict(k=0.5, selection=calib[:8]) for m in rp.hbgs.METHODS}}
    return small.get(method, {})


@pytest.mark.parametrize("label", ALL)
def test_every_method_meets_its_flops_target(setting, label):
    model, calib, loader, _ = setting
    method = label.partition("+")[0]
    before = copy.deepcopy(model.state_dict())
    net, record = rp.prune(model, method, TARGET, "flops", calib=calib, **options(label, loader, calib))
    full = S.count(model)["flops"]
    assert record["method"] == method and record["target"] == TARGET
    assert record["budget"] == "flops" and record["seconds"] > 0
    assert S.count(net)["flops"] == record["flops"] <= (1 - TARGET) * full + 1  # never over
    assert record["flops_reduction"] >= TARGET - 1 / full
    assert 0 < record["params_reduction"] < 1
    with torch.no_grad():
        out = net.eval()(calib[:4])
    assert out.shape == (4, 10) and torch.isfinite(out).all()
    if method in MASKS:
        assert set(record["amounts"]) == set(M.prunable(model))
        assert M.sparsity(net) > 0
    elif method == "rd_filter":
        assert set(record["amounts"]) <= set(S.groups(model))
    else:
        assert record["kept_channels"] == S.widths(net)
    if method in rp.hbgs.METHODS or method == "jointpruning":
        assert len(record["trace"]) > 0
    after = model.state_dict()  # the user's model is untouched
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in after)


def test_refine_is_never_worse_than_plain_rd(setting):
    model, calib, loader, _ = setting
    _, plain = rp.prune(model, "rd", TARGET, "flops", calib=calib, grid=6)
    net, refined = rp.prune(model, "rd", TARGET, "flops", calib=calib, grid=6, refine=2)
    d = {k: rp.rd.distortion(model, M.apply(copy.deepcopy(model), r["amounts"]), calib)
         for k, r in (("plain", plain), ("refined", refined))}
    assert d["refined"] <= d["plain"]


def test_bad_calls_fail_before_work(setting):
    model, calib, loader, _ = setting
    with pytest.raises(ValueError, match="unknown method 'magic'"):
        rp.prune(model, "magic", 0.5, calib=calib)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rp.prune(model, "lamp", 1.0)
    with pytest.raises(ValueError, match="budget='flops'"):
        rp.prune(model, "jointpruning", 0.5, "params", calib=calib, train_loader=loader)
    with pytest.raises(ValueError, match="train_loader"):
        rp.prune(model, "jointpruning", 0.5, "flops", calib=calib)
    with pytest.raises(ValueError, match="calib="):
        rp.prune(model, "rd", 0.5)
    with pytest.raises(ValueError, match="'rd' only"):
        rp.prune(model, "lamp", 0.5, refine=2)
    with pytest.raises(ValueError, match="out of reach"):
        rp.prune(model, "lamp", 0.5, exclude=["layer*", "conv1"])


def test_evaluate_pruned_counts_recalibrates_and_fine_tunes(setting):
    model, calib, loader, test_loader = setting
    net = S.uniform_width(model, 0.5)
    row, tuned = rp.evaluate_pruned(net, model, test_loader, calib=calib, finetune_loader=loader,
                                    finetune_steps=2, dev="cpu")
    c, full = S.count(net), S.count(model)
    assert row["params"] == c["params"] and row["flops"] == c["flops"]
    assert row["flops_reduction"] == pytest.approx(1 - c["flops"] / full["flops"])
    assert row["top1_before"] == rp.train.evaluate(net, test_loader)["top1"]
    recal = rp.train.recalibrate_bn(copy.deepcopy(net), calib)
    assert row["top1_recal"] == rp.train.evaluate(recal, test_loader)["top1"]
    assert row["top1_after"] == rp.train.evaluate(tuned, test_loader)["top1"]
    assert tuned is not net and S.count(tuned) == c  # fine-tuning changes weights, not shape
    plain, same = rp.evaluate_pruned(net, model, test_loader)  # no calib, no fine-tune
    assert same is net and plain["top1_after"] == plain["top1_before"]
    assert plain["top1_recal"] != plain["top1_recal"]  # NaN: nothing re-estimated
    with pytest.raises(ValueError, match="finetune_loader"):
        rp.evaluate_pruned(net, model, test_loader, finetune_steps=3)


def test_fine_tuning_never_returns_a_network_worse_on_held_out_images(setting, lenet):
    """On a trained LeNet-5 at 30 % (accurate, so a destructive fine-tune can only lose)."""
    _, calib, _, test_loader = setting
    val, ft_loader = rp.data.selection_split("fashion_mnist", n=128, train_size=64, labels=True)
    model = lenet
    net, _ = rp.prune(model, "lamp", 0.3)
    start = rp.train.evaluate(rp.train.recalibrate_bn(copy.deepcopy(net), calib), [val])["top1"]
    assert start > 0.5
    for lr, wrecked in ((10.0, True), (3e-4, None)):  # lr 10 destroys the network
        row, tuned = rp.evaluate_pruned(net, model, test_loader, calib=calib, val=val, lr=lr,
                                        finetune_loader=ft_loader, finetune_steps=3, dev="cpu")
        assert row["val_before"] == start
        assert rp.train.evaluate(tuned, [val])["top1"] >= start  # never worse where it matters
        assert row["finetune_kept"] == (row["val_after"] >= start)
        if wrecked:
            assert not row["finetune_kept"] and row["top1_after"] == row["top1_recal"]


def test_equal_training_budget_counts_the_steps_inside_each_method(setting):
    """HBGS-B fine-tunes between rounds: its record counts those steps, and the comparison
    harness gives the others the difference as a final fine-tune, so every row trains the same
    total (notebooks 05 and 06)."""
    from rdprune.lab import experiments

    model, calib, loader, test_loader = setting
    options = {"HBGS-B": dict(k=0.5, selection=calib[:8], finetune_steps=2, train_loader=loader)}
    pruned, notes = experiments.prune_each(model, ["HBGS-B", "l1_filter"], TARGET, "flops",
                                           calib=calib, options=options)
    assert not notes
    rec = pruned["HBGS-B"][1]
    assert rec["train_steps"] == 2 * len(rec["trace"]) > 0
    assert pruned["l1_filter"][1]["train_steps"] == 0
    rows, tuned = experiments.evaluate_each(pruned, model, test_loader, finetune_steps=3,
                                            finetune_loader=loader, calib=calib)
    by = {r["method"]: r for r in rows}
    assert {r["train_steps"] for r in rows} == {rec["train_steps"] + 3}
    assert by["HBGS-B"]["final_steps"] == 3
    assert by["l1_filter"]["final_steps"] == rec["train_steps"] + 3
    assert set(tuned) == {"HBGS-B", "l1_filter"}


def test_final_steps_fill_every_method_up_to_the_same_total():
    from rdprune.lab.experiments import final_steps

    assert final_steps({"a": {"train_steps": 0}, "b": {"train_steps": 15}, "c": {}}, 10) == \
        {"a": 25, "b": 10, "c": 25}
    assert final_steps({}, 7) == {}
    with pytest.raises(ValueError, match="finetune_steps"):
        final_steps({"a": {}}, -1)
