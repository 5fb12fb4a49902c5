"""The notebook collection and ``python -m rdprune reproduce``.

Every notebook runs once through papermill (via :func:`rdprune.reproduce.run`, the code behind the
CLI) with tiny parameters: LeNet-5 (and a ResNet-20 trained for seconds with the ``smoke`` recipe
for the additivity check and notebooks 04-06), a coarse grid, 128 calibration images and a few
fine-tuning / search steps, two notebooks at a time (``jobs=2``, a thread each). The tables and
figures they write are checked for sane values.
"""
import importlib.util
import json

import nbformat
import numpy as np
import pandas as pd
import pytest

import rdprune as rp
from rdprune import reproduce

pytestmark = pytest.mark.slow

NOTEBOOKS = reproduce.notebooks()
REQUIRED = {"dataset", "model", "recipe", "targets", "device", "out_dir"}  # and what each uses
TARGETS = [0.5, 0.9]
TINY = {
    "*": dict(model="lenet5", calib_n=128, grid=11, targets=TARGETS, interactive=True),
    "02_additivity": dict(model=["lenet5", "resnet20"], recipe="smoke", n_configs=8, calib_n=64,
                          grid=6),
    "03_rd_vs_baselines": dict(seeds=[0, 1], iterative_methods=["rd"], iterative_target=0.75, per_round=0.5,
                               finetune_steps=10, eval_subset=500, refine=2),
    # 04-06 need a ResNet (JointPruning's space, HBGS's wrapped 3x3 convs): the smoke ResNet-20;
    # 04 also searches the smoke MobileNetV2 at the 0.25x width multiplier's FLOPs (small: fast)
    "04_jointpruning": dict(model=["resnet20", "mobilenet_v2"], recipe="smoke", targets=[0.5],
                            widths=[0.25], eval_subset=300,
                            dims=[["channel", "depth", "resolution"]],  # the others: unit tests
                            supernet_steps={"*": 6, "mobilenet_v2": 3}, search_steps=2, samples=2,
                            retrain_steps=3),
    "05_hbgs": dict(model="resnet20", recipe="smoke", targets=[0.3], eval_subset=300,
                    methods=["HBGS-B"], uniform_selectors=["backward", "random"],  # HBGTS: test_front
                    selection_n=32, round_finetune_steps=1, finetune_steps=3),
    "06_comparison": dict(model="resnet20", recipe="smoke", seeds=[0], targets=[0.5],
                          eval_subset=300,
                          calib_n=32, grid=6, filter_grid=5, selection_n=32, round_finetune_steps=1,
                          methods=["rd", "rd_filter", "HBGS-B", "jointpruning", "uniform_width",
                                   "l1_filter"], supernet_steps=6, search_steps=2, samples=2,
                          finetune_steps=3, latency_batch=32, latency_repeats=1),
    "07_transformers": dict(model="vit_tiny", recipe="smoke", targets=[0.5, 0.8], eval_subset=200,
                            methods=["rd", "lamp", "owl"], refine=1, calib_n=16, grid=5,
                            lm_targets=[0.6], lm_methods=["uniform", "owl", "rd"],
                            lm_calib_n=4, lm_eval_windows=16, n_configs=4),
    "08_arena": dict(model=["lenet5", "lm_tiny"], recipe="smoke", targets=[0.6], refine=1,
                     evo={"generations": 2, "offspring": 2}, calib_n={"*": 32, "lm_tiny": 4},
                     grid=5, eval_subset=200),
}


# ----------------------------------------------------------------------------- static checks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_clean_and_parameterised(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.nbformat == 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "parameters" in code[0].metadata.get("tags", [])
    assert all(not c.outputs and c.execution_count is None for c in code), "strip the outputs"
    assert any(c.cell_type == "markdown" for c in nb.cells)
    declared = set(reproduce.declared(path))
    assert REQUIRED <= declared and ({"seed", "seeds"} & declared)
    if path.stem >= "03":  # the comparisons repeat over seeds
        assert "seeds" in declared and "seed" not in declared


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_thin(path):
    """A notebook reads as its story: parameters, library calls and plots. Harnesses live in the
    lab (rdprune.lab.experiments), so the code after the parameters cell stays near 60 lines."""
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"][1:]
    lines = [line for c in code for line in c.source.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    assert len(lines) <= 65, f"{path.stem}: {len(lines)} code lines; move a harness to the lab"


@pytest.mark.parametrize("preset", list(reproduce.PRESETS))
def test_a_preset_holds_only_what_it_changes(preset):
    """A value is written once: the notebooks' parameters cells are the quick preset, and any
    other preset names only parameters a notebook declares, each with a value of its own."""
    assert reproduce.PRESETS["quick"] == {}
    decl = {p.stem: reproduce.declared(p) for p in NOTEBOOKS}
    for stem, layer in reproduce.PRESETS[preset].items():
        assert stem == "*" or stem in decl, f"{preset}: no notebook {stem}"
        own = list(decl.values()) if stem == "*" else [decl[stem]]
        for key, value in layer.items():
            if key.startswith("_"):  # the preset's instructions (_skip)
                continue
            holders = [d for d in own if key in d]
            assert holders, f"{preset}/{stem}: no notebook declares {key}"
            assert any(d[key] != value for d in holders), \
                f"{preset}/{stem}: {key}={value!r} is already the notebooks' own value"
    p = reproduce.parameters("03_rd_vs_baselines", preset)
    assert set(decl["03_rd_vs_baselines"]) <= set(p)  # the notebook's own values fill the rest


def test_paper_numbers_table():
    df = reproduce.paper_numbers()
    assert list(df.columns) == ["paper", "dataset", "model", "method", "schedule", "metric",
                                "value", "source"]
    assert np.isfinite(df["value"]).all() and (df["source"] != "").all()
    rd = df[(df.model == "ResNet-32") & (df.metric == "top1_pct") & (df.method == "rd")]
    assert rd["value"].tolist() == [90.83]
    assert {"CIFAR-10", "CIFAR-100", "ImageNet"} <= set(df["dataset"])
    wide = reproduce.paper_numbers("RD", wide=True)  # one row per setting, a column per metric
    assert wide["paper"].str.startswith("RD").all() and {"sparsity_pct", "top1_pct"} <= set(wide)
    r32 = wide[(wide.model == "ResNet-32") & (wide.method == "rd")]
    assert r32["top1_pct"].dropna().tolist() == [90.83]
    assert len(wide) == len(df[df.paper.str.startswith("RD")][reproduce.SETTING].drop_duplicates())


# ----------------------------------------------------------------------------- execution
@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    # a cell limit turns a rare lost kernel reply (seen once, on a loaded machine) into a failure
    # instead of a hung CI job; every tiny cell takes seconds
    summary = reproduce.run("quick", overrides=TINY, results=root, progress=False,
                            cell_timeout=600, jobs=2)  # two at a time, a thread each
    return summary.set_index("notebook"), root / "quick"


HAS_HF = importlib.util.find_spec("transformers") is not None


def test_all_notebooks_ran(executed):
    summary, root = executed
    assert set(summary.index) == {p.stem for p in NOTEBOOKS}
    if not HAS_HF:  # notebook 07's language model is Hugging Face's GPT-2
        for stem in ("07_transformers", "08_arena"):
            assert summary.loc[stem, "reason"].startswith("needs transformers")
        summary = summary.drop(["07_transformers", "08_arena"])
    assert (summary["status"] == "ok").all(), summary.to_string()
    assert (root / "summary.csv").is_file()
    for p in NOTEBOOKS:
        if p.stem not in summary.index:
            continue
        out = nbformat.read(root / p.stem / p.name, as_version=4)
        injected = [c for c in out.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and "out_dir" in injected[0].source


def _figures(folder, *names):
    for name in names:
        for ext in ("png", "svg"):
            f = folder / f"{name}.{ext}"
            assert f.is_file() and f.stat().st_size > 1000, f


def test_rd_curves_outputs(executed):
    out = executed[1] / "01_rd_curves"
    _figures(out, "rd_curves", "rd_heatmap", *[f"allocation_{t * 100:g}pct" for t in TARGETS])
    curves = pd.read_csv(out / "curves.csv")
    assert (curves.loc[curves.amount == 0, "distortion"] == 0).all()
    steps = curves.sort_values(["layer", "amount"]).groupby("layer")["distortion"].diff().dropna()
    assert steps.mean() > 0 and (steps >= 0).mean() > 0.8  # non-decreasing on average
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.method) == {"rd", "lamp"} and set(summary.target) == set(TARGETS)
    assert summary.top1.between(0, 1).all()
    assert (summary.sparsity >= summary.target - 1e-9).all()
    assert (summary.sparsity - summary.target).abs().max() < 0.02
    assert ((summary.actual >= 0) & (summary.predicted >= 0)).all()
    alloc = pd.read_csv(out / "allocation.csv")
    assert alloc.amount.between(0, 1).all()


def test_additivity_outputs(executed):
    out = executed[1] / "02_additivity"
    _figures(out, "additivity")
    add = pd.read_csv(out / "additivity.csv")
    assert set(add.model) == {"lenet5", "resnet20"}
    assert {"predicted", "actual", "rel_error", "kind"} <= set(add.columns)
    assert (add.actual >= 0).all() and (add.predicted >= 0).all()
    corr = pd.read_csv(out / "correlation.csv")
    assert list(corr.model) == ["lenet5", "resnet20"]
    assert (corr.pearson_log > 0.5).all() and (corr.spearman > 0.5).all(), corr.to_string()


def test_baselines_outputs(executed):
    out = executed[1] / "03_rd_vs_baselines"
    _figures(out, "accuracy_vs_sparsity")
    res = pd.read_csv(out / "results.csv")
    assert res.top1.between(0, 1).all() and res.sparsity.between(0, 1).all()
    zs = res[res.schedule == "zero-shot"]
    assert set(zs.method) == {"rd", "rd+refine", "lamp", "global", "uniform", "uniform_plus", "erk"}
    assert (zs.sparsity - zs.target).abs().max() < 0.02
    assert set(res.seed) == {0, 1} and len(zs) == 2 * len(zs[zs.seed == 0])  # every row per seed
    it = res[res.schedule == "iterative"]
    assert list(it.method.unique()) == ["rd"]
    for _, one in it.groupby("seed"):
        assert one.sparsity.is_monotonic_increasing
        assert one.sparsity.iloc[-1] == pytest.approx(0.75, abs=0.02)
    dense = res[res.method == "dense"].top1
    assert len(dense) == 2 and (dense > 0.5).all() and dense.iloc[0] != dense.iloc[1]  # two models
    side = pd.read_csv(out / "side_by_side.csv", keep_default_na=False)
    assert (pd.to_numeric(side[side.source == "ours (this run)"].n_seeds) == 2).all()
    side = pd.read_csv(out / "side_by_side.csv", keep_default_na=False)
    ours = side[side.source == "ours (this run)"]
    theirs = side[side.source != "ours (this run)"]
    assert set(ours.dataset) == {"fashion_mnist"} and set(ours.model) == {"lenet5"}
    assert set(theirs.dataset) <= {"CIFAR-10", "ImageNet"} and len(theirs) >= 8
    assert theirs.top1.between(0, 1).all()


def test_jointpruning_outputs(executed):
    out = executed[1] / "04_jointpruning"
    _figures(out, *(f"{f}_{m}" for f in ("search_trace", "accuracy_vs_flops")
                     for m in ("resnet20", "mobilenet_v2")))
    trace = pd.read_csv(out / "search_trace.csv")
    assert list(trace.groupby("model", sort=False).size().items()) == [("resnet20", 2),
                                                                      ("mobilenet_v2", 2)]
    assert (trace.groupby("model").best.sum() == 1).all()
    r20, mb = trace[trace.model == "resnet20"], trace[trace.model == "mobilenet_v2"]
    assert (r20.flops_ratio <= 0.5).all() and (r20.flops_ratio >= 0.49).all()
    # MobileNetV2's target: the FLOPs of the zoo's 0.25x network, met within 1 % under it
    quarter = sum(rp.masks.layer_flops(rp.models.build("mobilenet_v2", width=0.25)).values())
    full = sum(rp.masks.layer_flops(rp.models.build("mobilenet_v2")).values())
    assert mb.flops_ratio.between(0.99 * quarter / full, quarter / full).all()
    abl = pd.read_csv(out / "ablation.csv")
    assert list(abl.method) == ["channel + depth + resolution"] * 2
    assert list(abl.model) == ["resnet20", "mobilenet_v2"] and (abl.resolution <= 28).all()
    table = pd.read_csv(out / "targets.csv")
    assert set(table.method) == {"channel + depth + resolution", "uniform width"}
    assert table.top1.between(0, 1).all()
    assert table[table.model == "resnet20"].flops_reduction.between(0.5, 0.6).all()
    uni = table[(table.model == "mobilenet_v2") & (table.method == "uniform width")]
    assert list(uni.width_multiplier) == [0.25] and uni.flops.iloc[0] == quarter
    jp = table[(table.model == "mobilenet_v2") & (table.method != "uniform width")]
    assert 0.99 * quarter <= jp.flops.iloc[0] <= quarter
    side = pd.read_csv(out / "side_by_side.csv", keep_default_na=False)
    assert (side.source == "ours (this run)").sum() == 2
    assert {"MetaPruning README", "paper abstract (FLOPs not stated)"} <= set(side.source)


def test_hbgs_outputs(executed):
    out = executed[1] / "05_hbgs"
    _figures(out, "accuracy_vs_reduction", "selection_order", "pruning_time")
    res = pd.read_csv(out / "results.csv")
    assert list(res.method) == ["HBGS-B", "FP-Backward", "random"]
    assert (res.params_reduction >= 0.3).all() and (res.params_reduction < 0.45).all()
    assert res[["top1_before", "top1_after"]].stack().between(0, 1).all()
    assert (res.prune_seconds > 0).all()
    # HBGS fine-tunes between rounds; every method trains the same total (the baselines at the end)
    hb = res.set_index("method").loc["HBGS-B"]
    assert hb.round_steps > 0 and res.train_steps.nunique() == 1
    assert (res.round_steps + res.final_steps == res.train_steps).all()
    assert res[["top1_recal"]].stack().between(0, 1).all()  # BN re-estimated after pruning
    traces = pd.read_csv(out / "traces.csv")
    assert set(traces.method) == {"HBGS-B"} and set(traces.side) <= {"in", "out"}
    side = pd.read_csv(out / "side_by_side.csv", keep_default_na=False)
    assert "ours (this run)" in set(side.source) and "authors' slides" in set(side.source)


def test_comparison_outputs(executed):
    out = executed[1] / "06_comparison"
    _figures(out, "comparison", "allocation")
    res = pd.read_csv(out / "results.csv")
    assert list(res.method) == TINY["06_comparison"]["methods"]  # seeds: 03 runs two
    assert set(res.seed) == {0}
    assert (res.flops_reduction >= 0.5 - 1e-9).all() and (res.flops_reduction < 0.6).all()
    assert res[["top1_before", "top1_recal", "top1_after"]].stack().between(0, 1).all()
    assert (res.latency_ms > 0).all() and (res.prune_seconds >= 0).all()
    assert res.groupby("target").train_steps.nunique().eq(1).all()  # the same training budget
    assert res.set_index("method").loc["HBGS-B", "round_steps"] > 0
    alloc = pd.read_csv(out / "allocation.csv", index_col=0)
    assert list(alloc.columns) == TINY["06_comparison"]["methods"]


def test_comparison_on_a_mobilenet_says_what_cannot_run(tmp_path):
    """Notebook 06 on MobileNetV2: HBGS cannot prune its depthwise and 1x1 convs, so its rows
    carry the reason (and the verdict names it) while the other methods run as usual."""
    params = dict(TINY["06_comparison"], model="mobilenet_v2", methods=["HBGS-B", "jointpruning"],
                  targets=[0.5], eval_subset=100, finetune_steps=2, supernet_steps=2,
                  search_steps=1, samples=1, calib_n=8, selection_n=16, latency_batch=8)
    summary = reproduce.run("quick", only=["06"], overrides={"06_comparison": params},
                            results=tmp_path, progress=False, cell_timeout=600)
    assert list(summary.status) == ["ok"], summary.to_string()
    out = tmp_path / "quick" / "06_comparison"
    res = pd.read_csv(out / "results.csv")
    assert list(res.method) == ["HBGS-B", "jointpruning"] and set(res.model) == {"mobilenet_v2"}
    hb, uw = res.iloc[0], res.iloc[1]
    assert hb.note.startswith("not applicable") and "depthwise" in hb.note
    assert np.isnan(hb.top1_after) and pd.isna(uw.note)
    assert 0.5 <= uw.flops_reduction <= 0.505 and 0 <= uw.top1_after <= 1
    nb = nbformat.read(out / "06_comparison.ipynb", as_version=4)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/markdown", ""))
                   for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "Not applicable to this network: HBGS-B" in text


# ----------------------------------------------------------------------------- the runner
def _tiny_notebook(path, body, dataset="fashion_mnist"):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    params = nbformat.v4.new_code_cell(f'dataset = "{dataset}"\nout_dir = "."\nseed = 0')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)


@pytest.mark.skipif(not HAS_HF, reason="notebook 07 needs transformers")
def test_transformers_outputs(executed):
    out = executed[1] / "07_transformers"
    _figures(out, "vit_curves_by_type", "vit_additivity", "lm_perplexity")
    curves = pd.read_csv(out / "vit_curves.csv")
    assert {"qkv", "attention output", "MLP up", "MLP down", "head"} <= set(curves.weight_type)
    vit = pd.read_csv(out / "vit.csv")
    assert set(vit.method) == {"rd", "rd+refine", "lamp", "owl"} and vit.top1.between(0, 1).all()
    assert (vit.sparsity >= vit.target - 1e-9).all()
    lm = pd.read_csv(out / "lm.csv")
    assert set(zip(lm.method, lm.criterion)) == {(m, c) for m in ("uniform", "owl", "rd")
                                                 for c in ("magnitude", "wanda")}
    assert (lm.perplexity > 1).all() and (lm.sparsity >= lm.target - 1e-9).all()
    goal = pd.read_csv(out / "goal_lm.csv")
    assert set(goal.criterion) == {"magnitude", "wanda"} and list(goal.target.unique()) == [0.6]
    assert set(goal.verdict) <= {"better", "worse", "equal"}  # one seed: no noise estimate
    assert set(pd.read_csv(out / "owl_paper.csv").dataset) == {"WikiText-2"}


@pytest.mark.skipif(not HAS_HF, reason="notebook 08's language model is Hugging Face's GPT-2")
def test_arena_outputs(executed):
    out = executed[1] / "08_arena"
    _figures(out, "arena_lenet5", "arena_lm_tiny", "additivity_audit")
    arena = pd.read_csv(out / "arena.csv")
    methods = set(reproduce.declared(reproduce.notebooks()[-1])["methods"]) | {"rd+refine"}
    for m in ("lenet5", "lm_tiny"):
        part = arena[arena.model == m]
        assert set(zip(part.method, part.criterion)) == {
            (a, c) for a in methods for c in ("magnitude", "wanda", "sparsegpt")
            if a != "rd+refine" or c == "magnitude"}  # refine: magnitude's neighbours
        assert (part.sparsity >= part.target - 1e-9).all()
    assert arena[arena.model == "lenet5"].top1.between(0, 1).all()
    assert (arena[arena.model == "lm_tiny"].perplexity > 1).all()
    free = arena.method.isin(["uniform", "erk", "lamp", "alphapruning"])
    assert (arena[free].passes == 0).all() and (arena[~free].passes > 0).all()
    verdict = pd.read_csv(out / "verdict.csv")
    assert set(verdict.method) == {"rd", "rd+evo", "evo", "alphapruning", "owl"}
    assert set(verdict.verdict) <= {"win", "tie", "loss", "better", "equal", "worse"}
    audit = pd.read_csv(out / "additivity_audit.csv")
    assert len(audit) == 6 and audit.spearman.between(-1, 1).all()
    assert set(pd.read_csv(out / "anchors.csv").model) == {"LLaMA-V1 7B"}


def test_cli_skips_reports_failures_and_goes_on(tmp_path, capsys):
    from rdprune.__main__ import main
    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(folder / "a_fails.ipynb", "raise RuntimeError('boom')")
    _tiny_notebook(folder / "b_ok.ipynb",
                   "from pathlib import Path\nPath(out_dir, 'done.json').write_text(str(seed))")
    _tiny_notebook(folder / "c_no_data.ipynb", "raise SystemExit('must not run')", "imagenet")
    rc = main(["reproduce", "--notebooks", str(folder), "--results", str(tmp_path / "res"),
               "--quiet", "-p", "seed", "7", "-p", "c_no_data:dataset", "imagenet"])
    captured = capsys.readouterr()
    assert rc == 1 and "failed: a_fails" in captured.err
    summary = pd.read_csv(tmp_path / "res" / "quick" / "summary.csv", keep_default_na=False)
    status = dict(zip(summary.notebook, summary.status))
    assert status == {"a_fails": "failed", "b_ok": "ok", "c_no_data": "skipped"}
    reasons = dict(zip(summary.notebook, summary.reason))
    assert "boom" in reasons["a_fails"] and "ImageNet" in reasons["c_no_data"]
    assert json.loads((tmp_path / "res" / "quick" / "b_ok" / "done.json").read_text()) == 7
    assert (tmp_path / "res" / "quick" / "a_fails" / "a_fails.ipynb").is_file()
    for line in ("a_fails", "b_ok", "c_no_data"):
        assert line in captured.out

    assert main(["reproduce", "--notebooks", str(folder), "--only", "zzz"]) == 2
    assert main(["reproduce", "--notebooks", str(folder), "-p", "nonexistent", "1"]) == 2
    assert main(["reproduce", "--notebooks", str(folder), "--results", str(tmp_path / "r2"),
                 "--quiet", "--only", "b_ok", "-p", "b_ok:seed", "[1, 2]"]) == 0


def test_a_preset_can_leave_a_notebook_out(tmp_path):
    """The full preset skips 04-06 with the reason (and how to run them), runs the others."""
    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(folder / "06_comparison.ipynb", "raise RuntimeError('must not run')")
    _tiny_notebook(folder / "02_additivity.ipynb",
                   "from pathlib import Path\nPath(out_dir, 'done.json').write_text('1')")
    summary = reproduce.run("full", results=tmp_path / "res", folder=folder, progress=False)
    status = dict(zip(summary.notebook, summary.status))
    assert status == {"02_additivity": "ok", "06_comparison": "skipped"}
    reason = summary.set_index("notebook").loc["06_comparison", "reason"]
    assert "not in the full preset" in reason and "--only 06" in reason
    assert reproduce.parameters("03_rd_vs_baselines", "full")["seeds"] == [0, 1, 2]
    asked = reproduce.run("full", only=["06"], results=tmp_path / "r2", folder=folder,
                          progress=False)  # --only names it: it runs (and fails here, on purpose)
    assert asked.status.tolist() == ["failed"] and "must not run" in asked.reason.iloc[0]


def test_jobs_must_be_a_whole_number():
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="jobs must be"):
            reproduce.run("quick", jobs=bad)


def test_parse_values():
    assert reproduce.parse_value("0.9") == 0.9
    assert reproduce.parse_value("[0.5, 0.9]") == [0.5, 0.9]
    assert reproduce.parse_value("true") is True and reproduce.parse_value("None") is None
    assert reproduce.parse_value("resnet20") == "resnet20"
    assert reproduce.parse_overrides([("grid", "11"), ("01_rd_curves:model", "lenet5")]) == \
        {"*": {"grid": 11}, "01_rd_curves": {"model": "lenet5"}}
    assert reproduce.dataset_problem("synthetic") is None
    assert "CIFAR-10" in (reproduce.dataset_problem("cifar10") or "CIFAR-10")
    with pytest.raises(ValueError, match="preset"):
        reproduce.parameters("01_rd_curves", "nope")


def test_a_missed_wake_up_costs_a_second_not_the_cell_timeout():
    """The kernel channel polls in slices: a poll that sleeps through a reply (nbclient#312; an
    explorer cell once took the whole 600-s limit) is followed by one that sees it; a socket that
    stays silent still raises Empty at the timeout, not before."""
    import asyncio
    import time
    from queue import Empty

    from rdprune.lab import kernel

    class Socket:
        def __init__(self, wakes):
            self.polls, self.wakes = [], wakes

        async def poll(self, ms):
            self.polls.append(ms)
            if len(self.polls) < self.wakes:  # nothing seen during this slice
                await asyncio.sleep(ms / 1000)
                return 0
            return 1

    def channel(wakes):
        ch = kernel.PatientChannel.__new__(kernel.PatientChannel)
        ch.socket = Socket(wakes)

        async def recv():
            return {"reply": len(ch.socket.polls)}
        ch._recv = recv
        return ch

    kc = kernel.PatientKernelManager().client()  # the client papermill's kernels get
    assert isinstance(kc, kernel.PatientClient)
    assert kc.shell_channel_class is kc.iopub_channel_class is kernel.PatientChannel
    old, kernel.SLICE = kernel.SLICE, 0.05
    try:
        ch, tic = channel(wakes=2), time.perf_counter()
        assert asyncio.run(ch.get_msg(timeout=600)) == {"reply": 2}
        assert time.perf_counter() - tic < 5 and ch.socket.polls == [50, 50]
        silent, tic = channel(wakes=10 ** 9), time.perf_counter()
        with pytest.raises(Empty):
            asyncio.run(silent.get_msg(timeout=0.3))
        assert 0.3 <= time.perf_counter() - tic < 5 and len(silent.socket.polls) >= 6
    finally:
        kernel.SLICE = old


def test_reproduce_runs_notebooks_with_the_patient_kernel(tmp_path, monkeypatch):
    import papermill

    from rdprune.lab import kernel
    seen = {}
    monkeypatch.setattr(papermill, "execute_notebook", lambda *a, **kw: seen.update(kw))
    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(folder / "01_x.ipynb", "1")
    reproduce.run("quick", results=tmp_path / "res", folder=folder, progress=False)
    assert seen["kernel_manager_class"] is kernel.PatientKernelManager


def test_a_cell_past_its_time_limit_still_fails(tmp_path):
    folder = tmp_path / "nbs"
    folder.mkdir()
    _tiny_notebook(folder / "01_slow.ipynb", "import time\ntime.sleep(30)")
    summary = reproduce.run("quick", results=tmp_path / "res", folder=folder, progress=False,
                            cell_timeout=3)
    assert summary.status.tolist() == ["failed"] and "timed out" in summary.reason.iloc[0]
    assert summary.seconds.iloc[0] < 25


@pytest.mark.parametrize("preset", list(reproduce.PRESETS))
@pytest.mark.parametrize("stem", ["05_hbgs", "06_comparison"])
def test_hbgs_always_fine_tunes_between_rounds(preset, stem):
    """The paper fine-tunes after every round; no preset may run an HBGS-family method without."""
    p = reproduce.parameters(stem, preset)
    if set(p.get("methods", [])) & set(rp.hbgs.METHODS):
        assert p["round_finetune_steps"] > 0, (preset, stem)
