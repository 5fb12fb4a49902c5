import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "rdprune", *args], capture_output=True,
                          text=True, timeout=600)


def test_baselines_table_then_cached(lenet, capsys):
    """In-process (``main``): three runs cost one import of torch, not three."""
    from rdprune.__main__ import main
    from rdprune.util import data_dir
    for old in (data_dir() / "results").glob("baselines-lenet5-*.csv"):  # earlier runs' tables
        old.unlink()
    args = ["baselines", "--model", "lenet5", "--targets", "0.5", "0.9", "--calib-n", "64",
            "--grid", "11", "--quiet"]

    def run_main(*extra):
        capsys.readouterr()
        code = main([*args, *extra])
        out = capsys.readouterr()
        assert code == 0, out.err
        return code, out.out
    code, first = run_main("--no-cache")
    for method in ["rd", "global", "uniform", "uniform_plus", "erk", "lamp"]:
        assert method in first
    assert "top-1" in first and "distortion" in first
    code, second = run_main()
    assert code == 0 and "using cached checkpoint" in second
    assert "using cached results" in second
    code, refined = run_main("--refine", "2")  # a different table: not the cached one
    assert code == 0 and "using cached results" not in refined
    assert "rd+refine" in refined


def test_bad_input_gives_a_clear_error():
    out = run("prune", "--model", "lenet5", "--target", "1.5")
    assert out.returncode == 2 and "[0, 1)" in out.stderr
    out = run("baselines", "--model", "resnet21")
    assert out.returncode == 2 and "unknown model" in out.stderr


def test_every_option_says_what_it_is_and_its_default():
    from rdprune.__main__ import build_parser
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    for name in ("baselines", "prune"):
        for action in subs[name]._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings} has no help line"
            shown = subs[name].formatter_class(prog="x")._get_help_string(action)
            if action.default not in (None, False):
                assert "default" in shown, f"{name} {action.option_strings} hides its default"
    top = parser.format_help()
    assert "prune" in top and "baselines" in top and "reproduce" in top


def test_bad_values_are_refused_before_any_model_is_loaded(tmp_path, monkeypatch, capsys):
    """Each call must fail at once with a clear message, and no checkpoint may be trained (the
    data folder stays empty of checkpoints). In-process (``main``), so the eleven cases cost one
    import of torch, not ten; an uncaught exception would propagate and fail the test."""
    import torch

    from rdprune.__main__ import main
    monkeypatch.setenv("RDPRUNE_DATA", str(tmp_path))
    cases = [
        (["prune", "--finetune-steps", "-3"], "--finetune-steps must be at least 0"),
        (["prune", "--calib-n", "0"], "--calib-n must be at least 1"),
        (["prune", "--grid", "1"], "--grid must be at least 2"),
        (["prune", "--eval-subset", "0"], "--eval-subset must be at least 1"),
        (["prune", "--target", "1.0"], "[0, 1)"),
        (["baselines", "--targets", "0.5", "2"], "[0, 1)"),
        (["baselines", "--methods", "uniform+"], "uniform_plus"),
        (["baselines", "--methods", "rd_filter"], "unknown method 'rd_filter'"),
        (["prune", "--device", "cuda:7"] if not torch.cuda.is_available()
         else ["prune", "--device", "tpu"], "device"),
        (["prune", "--dataset", "imagenet"], "--imagenet-root"),
        (["baselines", "--dataset", "mnist"], "unknown dataset 'mnist'"),
    ]
    for args, message in cases:
        capsys.readouterr()
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
    assert not (tmp_path / "checkpoints").exists()
    out = run("prune", "--method", "rd_filter")  # argparse's own choices: the mask allocators
    assert out.returncode == 2 and "invalid choice" in out.stderr and "lamp" in out.stderr


def test_run_folders_key_every_setting_and_files_are_readable(tmp_path):
    import stat

    from rdprune.lab import pipeline
    from rdprune.util import atomic_write_bytes
    base = dict(model="lenet5", dataset="fashion_mnist", recipe="quick", method="rd",
                schedule="oneshot", target=0.9, budget="params", preset="quick",
                calibration="train", seed=0,
                settings=__import__("dataclasses").asdict(pipeline.settings("quick")))
    names = {pipeline.run_name(base)}
    for key, value in [("recipe", "smoke"), ("seed", 1), ("target", 0.8)]:
        names.add(pipeline.run_name({**base, key: value}))
    for key, value in [("finetune_steps", 0), ("calib_n", 64), ("grid", 11), ("refine", 2),
                       ("distortion", "worst_case"), ("eval_subset", 100)]:
        names.add(pipeline.run_name({**base, "settings": {**base["settings"], key: value}}))
    assert len(names) == 10  # every setting that changes results changes the folder
    assert pipeline.run_name(dict(base)) == pipeline.run_name(base)  # and nothing else does
    atomic_write_bytes(tmp_path / "x.csv", b"a\n")
    assert stat.S_IMODE((tmp_path / "x.csv").stat().st_mode) == 0o644
