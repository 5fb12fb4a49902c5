"""The published result tables (docs/results.md, README's summary) and notebook conclusions are
computed from result files, never typed."""
import math
import re

import pandas as pd
import pytest

from rdprune.lab import readme as RM
from rdprune.lab import report as R
from rdprune.util import REPO


def test_noise_is_two_standard_errors():
    assert R.noise_pts(0.9, 2000) == pytest.approx(200 * math.sqrt(0.9 * 0.1 / 2000))
    assert R.noise_pts(0.5, 10_000) == pytest.approx(1.0)
    assert R.noise_pts(1.0, 100) > 0  # never zero, even at a perfect score


def _results(rd, lamp, schedule="zero-shot"):
    return pd.DataFrame([dict(method=m, schedule=schedule, target=0.5, top1=v)
                         for m, v in (("rd", rd), ("lamp", lamp), ("global", 0.2))])


@pytest.mark.parametrize("rd, lamp, word", [(0.90, 0.80, "wins"), (0.80, 0.90, "loses"),
                                            (0.900, 0.895, "ties with lamp")])
def test_rd_verdict_follows_the_numbers(rd, lamp, word):
    text = R.rd_verdict(_results(rd, lamp), n_test=2000)
    assert word in text and "50 % sparsity" in text
    assert "global" not in text  # compared with the best other allocator only


def test_rd_verdict_knows_chance():
    at_chance = _results(0.08, 0.112).replace({0.2: 0.1})
    text = R.rd_verdict(at_chance, n_test=2000, chance=0.1)
    assert "at chance" in text and "loses" not in text
    assert "loses" in R.rd_verdict(at_chance, n_test=2000)  # without: a number is a number


def test_comparison_verdict_follows_the_numbers():
    rows = [dict(method=m, target=0.5, top1_before=b, top1_recal=r, top1_after=a, speedup=s,
                 finetune_kept=k)
            for m, b, r, a, s, k in [("rd", 0.9, 0.9, 0.91, 1.0, True),
                                     ("l1_filter", 0.2, 0.6, 0.80, 1.5, True),
                                     ("HBGS-B", 0.1, 0.1, 0.10, 1.7, False)]]
    text = R.comparison_verdict(pd.DataFrame(rows), n_test=2000)
    assert "best after fine-tuning **rd**" in text and "fastest **HBGS-B**" in text
    assert "40 points (l1_filter)" in text and "HBGS-B at 50 %" in text
    assert "rd" not in text.split("raised")[1].split("\n")[0].replace("re-estimat", "")


def test_tables_render_and_replace_the_blocks_of_a_page(tmp_path):
    (tmp_path / "03_rd_vs_baselines").mkdir()
    pd.DataFrame([dict(method="rd", schedule="zero-shot", target=0.5, top1=0.9),
                  dict(method="lamp", schedule="zero-shot", target=0.5, top1=0.8)]).to_csv(
        tmp_path / "03_rd_vs_baselines" / "results.csv", index=False)
    blocks = RM.tables(tmp_path)
    assert list(blocks) == ["zero_shot"] and "| rd | 0.900 |" in blocks["zero_shot"]
    seeded = _seeded([0.85, 0.86, 0.87], [0.80, 0.81, 0.82]).assign(dataset="fashion_mnist",
                                                                     n_test=10_000)
    seeded.to_csv(tmp_path / "03_rd_vs_baselines" / "results.csv", index=False)
    with_seeds = RM.tables(tmp_path)
    assert "| rd | 0.860 ± 0.010 |" in with_seeds["zero_shot"]
    assert "n = 3 seeds" in with_seeds["zero_shot"]
    assert "**wins**" in with_seeds["verdict"] and "10000 test images" in with_seeds["verdict"]
    text = "a\n<!-- table:zero_shot -->\nold\n<!-- /table:zero_shot -->\nb"
    assert RM.update_blocks(text, blocks) == \
        f"a\n<!-- table:zero_shot -->\n{blocks['zero_shot']}\n<!-- /table:zero_shot -->\nb"


def test_compare_flags_what_moved(tmp_path):
    for name, v in (("new", 0.90), ("old", 0.85)):
        (tmp_path / name / "03_rd_vs_baselines").mkdir(parents=True)
        pd.DataFrame([dict(method="rd", schedule="zero-shot", target=0.5, top1=v),
                      dict(method="lamp", schedule="zero-shot", target=0.5, top1=0.8)]).to_csv(
            tmp_path / name / "03_rd_vs_baselines" / "results.csv", index=False)
    diff = RM.compare(tmp_path / "new", tmp_path / "old", tolerance_pts=3)
    assert diff.set_index("method").loc["rd", "diff_pts"] == pytest.approx(5.0)
    assert diff.set_index("method")["within"].to_dict() == {"rd": False, "lamp": True}


def _seeded(rd, lamp, schedule="zero-shot"):
    """One row per method and seed: rd and lamp top-1s per seed."""
    return pd.DataFrame([dict(method=m, schedule=schedule, target=0.5, top1=v, seed=s)
                         for s, (a, b) in enumerate(zip(rd, lamp))
                         for m, v in (("rd", a), ("lamp", b))])


def test_spread_is_mean_sd_and_n_over_seeds():
    df = _seeded([0.90, 0.92, 0.94], [0.80, 0.80, 0.83])
    s = R.spread(df, ["method", "target"], "top1").set_index("method")
    assert s.loc["rd", "mean"] == pytest.approx(0.92) and s.loc["rd", "n"] == 3
    assert s.loc["rd", "std"] == pytest.approx(0.02)  # the sample (n - 1) standard deviation
    table = R.spread_table(df, "method", "target", "top1", label="top-1")
    assert table.loc["rd", 0.5] == "0.920 ± 0.020" and "n = 3 seeds" in table.index.name
    two = R.spread_table(df, ["method", "schedule"], "target", "top1", label="top-1")
    assert two.loc[("rd", "zero-shot"), 0.5] == "0.920 ± 0.020"
    assert "n = 3 seeds" in two.columns.name  # the label survives a two-level index
    one = R.spread_table(df[df.seed == 0], "method", "target", "top1")
    assert one.loc["rd", 0.5] == "0.900" and "one seed" in one.index.name
    side = R.spread_tables(df.assign(loss=df.top1 / 7), "method", "target",
                           [("top1", 3), ("loss", 4)])
    assert list(side.columns.get_level_values(0).unique()) == ["top1", "loss"]
    assert side[("top1", 0.5)]["rd"] == "0.920 ± 0.020"
    assert side[("loss", 0.5)]["rd"] == f"{0.92 / 7:.4f} ± {0.02 / 7:.4f}"


def test_gap_pairs_seeds_and_its_interval_is_students_t():
    df = _seeded([0.90, 0.92, 0.94], [0.89, 0.90, 0.91])
    g = R.gap(df, "rd", "lamp")
    # per-seed differences: 1, 2 and 3 points
    assert g["mean"] == pytest.approx(2.0) and g["sd"] == pytest.approx(1.0) and g["n"] == 3
    assert g["half"] == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)
    assert R.gap(df, "rd", "erk") is None
    partial = R.gap(df[~((df.method == "lamp") & (df.seed == 2))], "rd", "lamp")
    assert partial["n"] == 2 and partial["a"] == pytest.approx(0.91)  # shared seeds only
    assert R.t95(1) == pytest.approx(12.706) and R.t95(1000) == pytest.approx(1.962, abs=1e-3)
    assert R.t95(40) == pytest.approx(2.021, abs=5e-3)
    with pytest.raises(ValueError, match="two seeds"):
        R.t95(0)


def test_rd_verdict_over_seeds_needs_a_consistent_gap():
    # +5 points on every seed: a win; +5 on average but -5..+15 across seeds: inside the spread
    steady = R.rd_verdict(_seeded([0.85, 0.86, 0.87], [0.80, 0.81, 0.82]), n_test=10_000)
    assert "**wins**" in steady and "3 seeds" in steady
    shaky = R.rd_verdict(_seeded([0.75, 0.95, 0.85], [0.80, 0.80, 0.80]), n_test=10_000)
    assert "ties with lamp" in shaky and "wins" not in shaky
    # the seeds share the test images: a steady +1 point stays inside their ±1.6-point noise
    shared = R.rd_verdict(_seeded([0.81, 0.81, 0.81], [0.80, 0.80, 0.80]), n_test=2000)
    assert "ties with lamp" in shared
    # the same means from one seed would be a win: the seeds are what makes it a tie
    assert "**wins**" in R.rd_verdict(_seeded([0.85], [0.80]), n_test=10_000)


PAGES = {"docs/results.md": REPO / "docs" / "results.md", "README.md": REPO / "README.md"}


@pytest.mark.parametrize("preset", [p.name for p in (REPO / "docs" / "results").iterdir()
                                    if p.is_dir()])
def test_published_tables_equal_the_committed_results(preset):
    """docs/results.md's result tables (and README's summary tables) are exactly what
    docs/results/<preset>'s CSVs render to (written by ``python -m rdprune report --results
    results/<preset> --publish`` after a ``reproduce``). A preset folder without a published run
    yet (only a benchmark's CSVs, say) renders no tables: its blocks must then still be empty."""
    docs = REPO / "docs" / "results" / preset
    blocks = RM.tables(docs)
    results = PAGES["docs/results.md"].read_text()
    prefix = RM.block_prefix(preset)
    if prefix + "zero_shot" not in blocks:
        filled = re.findall(rf"<!-- table:({re.escape(prefix)}\w+) -->\n(?!<!-- /table:\1 -->)", results)
        assert not prefix or not filled, f"docs/results.md's blocks {filled} have tables but {docs} has no run"
        pytest.skip(f"{docs} has no published run yet")
    for page, path in PAGES.items():
        text = path.read_text()
        assert RM.update_blocks(text, blocks) == text, f"{page} differs from {docs}'s CSVs"
    for name in blocks:
        assert f"<!-- table:{name} -->" in results, f"docs/results.md lacks the block {name}"


def test_every_block_on_a_page_has_a_source():
    """A block with a table must come from a committed results folder; README's blocks are also
    in docs/results.md. Empty blocks wait for a run (the paper_regime preset's)."""
    rendered = {}
    for folder in (REPO / "docs" / "results").iterdir():
        if folder.is_dir():
            rendered.update(RM.tables(folder))
    results = PAGES["docs/results.md"].read_text()
    for page, path in PAGES.items():
        for name, body in re.findall(r"<!-- table:(\w+) -->\n(.*?)<!-- /table:\1 -->", path.read_text(),
                                     re.S):
            assert not body.strip() or name in rendered, f"{page}: block {name} has no results folder"
            assert f"<!-- table:{name} -->" in results, f"{page}: block {name} not in docs/results.md"
    for name in ("iterative", "zero_shot", "verdict", "times"):
        assert f"<!-- table:paper_regime_{name} -->" in results


def _ppl(rd, owl, criterion="wanda"):
    return pd.DataFrame([dict(method=m, criterion=criterion, target=0.6, perplexity=v, seed=s)
                         for s, (a, b) in enumerate(zip(rd, owl))
                         for m, v in (("rd", a), ("owl", b))])


def test_goal_follows_the_numbers_and_says_so_without_noise_on_one_seed():
    one = R.goal(_ppl([4.0], [5.0]), "rd", "owl", "perplexity", [0.6], by="criterion", lower=True)
    assert one.verdict.tolist() == ["better"] and one.difference.iloc[0] == pytest.approx(-1.0)
    worse = R.goal(_ppl([5.5], [5.0]), "rd", "owl", "perplexity", [0.6], lower=True)
    assert worse.verdict.tolist() == ["worse"]
    steady = R.goal(_ppl([4.0, 4.1, 4.2], [5.0, 5.1, 5.2]), "rd", "owl", "perplexity", [0.6],
                    lower=True)
    noisy = R.goal(_ppl([4.0, 6.0, 4.5], [5.0, 5.0, 5.0]), "rd", "owl", "perplexity", [0.6],
                   lower=True)
    assert steady.verdict.tolist() == ["win"] and noisy.verdict.tolist() == ["tie"]
    top1 = R.goal(_seeded([0.86, 0.87, 0.85], [0.80, 0.81, 0.80]), "rd", "lamp", "top1", [0.5],
                  n_test=10_000)
    assert top1.verdict.tolist() == ["win"] and top1.n_seeds.tolist() == [3]
    assert R.goal(_seeded([0.8005], [0.8]), "rd", "lamp", "top1", [0.5],
                  n_test=2000).verdict.tolist() == ["tie"]  # inside two standard errors


def test_publishing_some_notebooks_keeps_the_other_rows_of_the_summary(tmp_path):
    docs, run = tmp_path / "docs", tmp_path / "run"
    docs.mkdir()
    run.mkdir()
    pd.DataFrame([dict(notebook="01_rd_curves", status="ok", seconds=60, reason=""),
                  dict(notebook="07_transformers", status="ok", seconds=9, reason="")]).to_csv(
        docs / "summary.csv", index=False)
    pd.DataFrame([dict(notebook="07_transformers", status="ok", seconds=900, output="/x",
                       reason="")]).to_csv(run / "summary.csv", index=False)
    readme, page = tmp_path / "README.md", tmp_path / "results.md"
    readme.write_text("<!-- table:times -->\n<!-- /table:times -->\n")
    page.write_text("# results\n<!-- table:times -->\n<!-- /table:times -->\n")
    RM.publish(run, docs, [page, readme])
    assert "| 07_transformers | ok | 15.0 |" in page.read_text()
    merged = pd.read_csv(docs / "summary.csv")
    assert merged.notebook.tolist() == ["01_rd_curves", "07_transformers"]
    assert merged.seconds.tolist() == [60, 900]
    assert "| 07_transformers | ok | 15.0 |" in readme.read_text()


def test_transformer_tables_render_whatever_targets_a_run_has(tmp_path):
    folder = tmp_path / "07_transformers"
    folder.mkdir()
    pd.concat([_ppl([4.0], [5.0], c).assign(target=0.5) for c in ("magnitude", "wanda")]).assign(
        sparsity=0.5).to_csv(folder / "lm.csv", index=False)
    blocks = RM.tables(tmp_path)  # no 60 % or 70 % row: no goal table, and no error
    assert "transformers_lm" in blocks and "transformers_goals" not in blocks
    pd.concat([_ppl([4.0], [5.0], c) for c in ("magnitude", "wanda")]).assign(
        sparsity=0.6).to_csv(folder / "lm.csv", index=False)
    goals = RM.tables(tmp_path)["transformers_goals"]
    assert goals.count("| better |") == 2 and "| lm_tiny | perplexity | wanda | 60% |" in goals
    with pytest.raises(ValueError, match="lower=False"):
        R.goal(_ppl([4.0], [5.0]), "rd", "owl", "top1", [0.6], lower=True, n_test=100)


def test_jointpruning_table_orders_variants_and_judges_each_against_uniform(tmp_path):
    folder = tmp_path / "04_jointpruning"
    folder.mkdir()
    base = dict(dataset="fashion_mnist", seed=0, n_test=2000)
    abl = [dict(base, model="mobilenet_v2", method=m, target=0.683, width_multiplier=None,
                flops=23.0e6, top1=v) for m, v in (("channel", 0.85), ("channel + depth", 0.80))]
    tgt = [dict(base, model="mobilenet_v2", method="channel + depth", target=0.683,
                width_multiplier=None, flops=23.0e6, top1=0.80),
           dict(base, model="mobilenet_v2", method="uniform width", target=0.683,
                width_multiplier=0.5, flops=23.1e6, top1=0.81),
           dict(base, model="resnet20", method="channel + depth", target=0.5,
                width_multiplier=None, flops=15e6, top1=0.70),
           dict(base, model="mobilenet_v2", method="channel + depth", target=0.3,
                width_multiplier=None, flops=50e6, top1=0.90),
           dict(base, model="mobilenet_v2", method="uniform width", target=0.3,
                width_multiplier=0.75, flops=50e6, top1=0.90),
           dict(base, model="resnet20", method="uniform width", target=0.5,
                width_multiplier=None, flops=15e6, top1=0.90)]
    pd.DataFrame(abl).to_csv(folder / "ablation.csv", index=False)
    pd.DataFrame(tgt).to_csv(folder / "targets.csv", index=False)
    lines = RM.tables(tmp_path, prefix="")["jointpruning"].splitlines()[2:]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert [(c[0], c[1], c[2]) for c in cells[:2]] == [
        ("mobilenet_v2", "30.0% (the 0.75× network's)", "channel + depth"),
        ("mobilenet_v2", "30.0% (the 0.75× network's)", "uniform width")]
    assert cells[0][-1] == "tie"
    cells = cells[2:]
    assert [(c[0], c[2]) for c in cells] == [
        ("mobilenet_v2", "channel"), ("mobilenet_v2", "channel + depth"),
        ("mobilenet_v2", "uniform width"), ("resnet20", "channel + depth"),
        ("resnet20", "uniform width")]
    assert cells[0][1] == "68.3% (the 0.5× network's)" and cells[3][1] == "50%"
    # 4 points over uniform on 2,000 images is beyond two standard errors (about 1.7 points),
    # 1 point under it is not, 20 points under it is a loss
    assert [c[-1] for c in cells] == ["win", "tie", "", "loss", ""]
    assert cells[0][5] == "+4.0" and cells[3][5] == "-20.0" and cells[2][5] == "–"
    assert cells[0][3] == "23.0" and cells[0][4] == "0.850"


def test_comparison_verdict_names_methods_that_could_not_run():
    nan = float("nan")
    rows = [dict(method="uniform_width", target=0.5, top1_before=0.5, top1_recal=0.6,
                 top1_after=0.8, speedup=1.4, note=None),
            dict(method="HBGS-B", target=0.5, top1_before=nan, top1_recal=nan, top1_after=nan,
                 speedup=nan, note="not applicable: no dense K×K conv to prune")]
    text = R.comparison_verdict(pd.DataFrame(rows), n_test=2000)
    assert "Not applicable to this network: HBGS-B (no dense K×K conv to prune)." in text
    assert "best after fine-tuning **uniform_width**" in text and "fastest **uniform_width**" in text


def test_update_blocks_refuses_a_block_given_twice():
    text = "a\n<!-- table:x -->\n<!-- /table:x -->\nkeep me\n<!-- table:x -->\n<!-- /table:x -->\n"
    with pytest.raises(ValueError, match="twice"):
        RM.update_blocks(text, {"x": "| t |"})
