import copy
import math

import pandas as pd
import pytest

import rdprune as rp
from rdprune import masks as M
from rdprune import pipeline


def test_iterative_targets_follow_the_authors_schedule():
    t = pipeline.schedule_targets("iterative", 0.9885, 0.2)
    assert len(t) == 20 and t[0] == pytest.approx(0.2) and t[1] == pytest.approx(0.36)
    assert t[-1] == pytest.approx(0.9885)
    assert pipeline.schedule_targets("oneshot", 0.9) == [0.9]
    with pytest.raises(ValueError, match="schedule"):
        pipeline.schedule_targets("cyclic", 0.9)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        pipeline.schedule_targets("oneshot", 1.2)


def test_an_iterative_schedule_lands_on_the_sparsities_it_must_visit():
    """The paper-regime preset halves the remaining weights per round and must report 95.5 %."""
    plain = pipeline.schedule_targets("iterative", 0.98847, 0.5)
    assert 0.955 not in plain
    t = pipeline.schedule_targets("iterative", 0.98847, 0.5, visit=(0.955,))
    assert t == pytest.approx([0.5, 0.75, 0.875, 0.9375, 0.955, 0.9775, 0.98847])
    assert all(b > a for a, b in zip(t, t[1:]))  # never a round that prunes nothing
    for a, b in zip(t, t[1:]):  # no round removes more than per_round of what is left
        assert (b - a) / (1 - a) <= 0.5 + 1e-12
    assert pipeline.schedule_targets("iterative", 0.9, 0.5, visit=(0.95,)) == \
        pipeline.schedule_targets("iterative", 0.9, 0.5)  # beyond the target: ignored
    with pytest.raises(ValueError, match="visit"):
        pipeline.schedule_targets("iterative", 0.9, 0.5, visit=(1.0,))


def test_unknown_settings_are_refused():
    with pytest.raises(ValueError, match="finetune_steps"):
        pipeline.settings("quick", finetune_step=3)
    with pytest.raises(ValueError, match="quick"):
        pipeline.settings("slow")
    with pytest.raises(ValueError, match="unknown method"):  # before any training
        pipeline.run("lenet5", method="magnitude")
    with pytest.raises(ValueError, match="rp.prune"):
        pipeline.run("lenet5", method="rd_filter")
    with pytest.raises(ValueError, match="refine applies to method 'rd' only"):
        pipeline.run("lenet5", method="lamp", refine=2)
    with pytest.raises(ValueError, match="finetune_schedule 'cosin'; choose one of constant"):
        pipeline.run("lenet5", method="lamp", finetune_schedule="cosin")  # before any training


def test_the_fine_tune_schedule_reaches_the_optimiser(lenet, tmp_path, monkeypatch):
    """finetune_schedule='cosine' decays each round's learning rate to zero; 'constant' keeps
    the RD authors' fixed rate."""
    import torch
    lrs = []
    step = torch.optim.AdamW.step

    def spy(self, *a, **kw):
        lrs.append(self.param_groups[0]["lr"])
        return step(self, *a, **kw)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    for schedule in ("constant", "cosine"):
        pipeline.run("lenet5", "fashion_mnist", "lamp", "oneshot", 0.5, out=tmp_path / schedule,
                     progress=False, finetune_steps=4, finetune_schedule=schedule, calib_n=32,
                     eval_subset=100, val_n=0)
    constant, cosine = lrs[:4], lrs[4:]
    assert constant == [3e-4] * 4
    assert cosine[0] == 3e-4 and all(a > b for a, b in zip(cosine, cosine[1:]))
    assert cosine[-1] == pytest.approx(3e-4 * (1 + math.cos(math.pi * 3 / 4)) / 2)


@pytest.mark.parametrize("calibration", ["train", "synthetic"])
def test_iterative_rd_run_is_monotone_and_resumable(lenet, tmp_path, calibration, monkeypatch):
    kw = dict(budget="params", calibration=calibration, out=tmp_path, progress=False,
              finetune_steps=5, calib_n=64, grid=11, eval_subset=500)
    table = pipeline.run("lenet5", "fashion_mnist", "rd", "iterative", 0.5, **kw)
    assert table["round"].tolist() == [0, 1, 2, 3, 4]
    # rounds never undo pruning; a coarse grid may overshoot a round's target, never undershoot
    assert (table.sparsity.diff().dropna() >= 0).all()
    assert (table.sparsity.iloc[1:] >= table.target.iloc[1:] - 1e-3).all()
    assert table.sparsity.iloc[-1] == pytest.approx(0.5, abs=0.05)
    assert table.top1.between(0, 1).all()
    assert (table.actual >= 0).all() and (table.actual.iloc[1] > 0)
    on_disk = pd.read_csv(tmp_path / "results.csv")
    assert len(on_disk) == 5
    # a rerun with the same settings resumes after the last round instead of recomputing
    monkeypatch.setattr(pipeline, "prune_round", lambda *a, **k: pytest.fail("recomputed"))
    again = pipeline.run("lenet5", "fashion_mnist", "rd", "iterative", 0.5, **kw)
    pd.testing.assert_frame_equal(again, table)


def test_rounds_with_refine_are_never_worse_and_never_unprune(lenet, calib):
    plain, refined = copy.deepcopy(lenet), copy.deepcopy(lenet)
    x = calib[:64]
    a = pipeline.prune_round(plain, "rd", 0.4, x, grid=11, progress=False)
    b = pipeline.prune_round(refined, "rd", 0.4, x, grid=11, refine=3, progress=False)
    assert b["actual"] <= a["actual"] and M.sparsity(refined) >= 0.4 - 1e-9
    masks = {k: M.mask_of(m).clone() for k, m in M.prunable(refined).items()}
    pipeline.prune_round(refined, "rd", 0.64, x, grid=11, refine=3, progress=False)
    assert M.sparsity(refined) >= 0.64 - 1e-9
    assert all((M.mask_of(m) <= masks[k]).all() for k, m in M.prunable(refined).items())


def test_oneshot_zero_shot_baseline(lenet, tmp_path):
    table = pipeline.run("lenet5", "fashion_mnist", "lamp", "oneshot", 0.8, out=tmp_path,
                         progress=False, finetune_steps=0, calib_n=64, eval_subset=500)
    assert len(table) == 2 and table.sparsity.iloc[-1] == pytest.approx(0.8, abs=0.01)
    assert table.flops_left.iloc[-1] < 1


def test_zero_shot_table(lenet, calib):
    _, test = rp.data.loaders("fashion_mnist", 512, subset=300)
    curves = rp.rd.curves(lenet, calib[:64], grid=11, cache=False, progress=False)
    df = pipeline.zero_shot(lenet, ["rd", "lamp"], [0.5, 0.8], calib[:64], test, curves=curves,
                            held_out=calib[64:128])
    assert list(zip(df.method, df.target)) == [("rd", 0.5), ("rd", 0.8), ("lamp", 0.5),
                                               ("lamp", 0.8)]
    assert (df.sparsity >= df.target - 1e-3).all() and df.top1.between(0, 1).all()
    assert (df.distortion > 0).all() and (df.distortion_heldout > 0).all()
    assert df.flops_left.between(0, 1).all() and df.predicted.notna().all()
    assert set(df.attrs["amounts"]) == {("rd", 0.5), ("rd", 0.8), ("lamp", 0.5), ("lamp", 0.8)}
    assert M.sparsity(lenet) == 0  # the model itself is untouched
    both = pipeline.zero_shot(lenet, ["rd"], [0.5, 0.8], calib[:64], test, curves=curves,
                              refine=3)
    assert both.method.tolist() == ["rd", "rd", "rd+refine", "rd+refine"]
    refined = both[both.method == "rd+refine"]
    assert (refined.distortion.to_numpy() <= df.distortion[df.method == "rd"].to_numpy()).all()
    assert (refined.sparsity >= refined.target - 1e-9).all()


def test_a_fine_tune_that_hurts_held_out_images_is_undone(lenet, tmp_path, monkeypatch):
    """The round's guard: a fine-tune that lowers top-1 on the held-out training images is
    reverted (the round continues from the pruned weights), one that does not is kept."""
    from rdprune.lab import train

    def ruin(model, loader, steps, **kw):  # a "fine-tune" that destroys the network
        seen.append(len(loader.x))
        for p in model.parameters():
            p.data.mul_(-3.0)
        return model

    seen = []
    monkeypatch.setattr(train, "fine_tune", ruin)
    kw = dict(out=tmp_path / "ruin", progress=False, finetune_steps=5, calib_n=64, grid=11,
              eval_subset=500, val_n=256)
    table = pipeline.run("lenet5", "fashion_mnist", "lamp", "oneshot", 0.5, **kw)
    plain = pipeline.run("lenet5", "fashion_mnist", "lamp", "oneshot", 0.5,
                         **{**kw, "out": tmp_path / "plain", "finetune_steps": 0})
    last = table.iloc[-1]
    assert not last.finetune_kept and last.val_after < last.val_before
    assert last.stage == "pruned" and last.top1 == plain.top1.iloc[-1]
    n_train = len(rp.data.tensors("fashion_mnist", "train")[0])
    assert seen == [n_train - 256]  # the held-out images are not trained on
    unguarded = pipeline.run("lenet5", "fashion_mnist", "lamp", "oneshot", 0.5,
                             **{**kw, "out": tmp_path / "off", "val_n": 0})
    assert unguarded.top1.iloc[-1] < plain.top1.iloc[-1]  # without the guard the harm stays
