import subprocess
import sys


def run(*args):
    return subprocess.run([sys.executable, "-m", "rdprune", *args], capture_output=True,
                          text=True, timeout=600)


def test_baselines_table_then_cached(lenet):
    args = ["baselines", "--model", "lenet5", "--targets", "0.5", "0.9", "--calib-n", "64",
            "--grid", "11", "--quiet"]
    first = run(*args, "--no-cache")
    assert first.returncode == 0, first.stderr
    for method in ["rd", "global", "uniform", "uniform_plus", "erk", "lamp"]:
        assert method in first.stdout
    assert "top-1" in first.stdout and "distortion" in first.stdout
    second = run(*args)
    assert second.returncode == 0 and "using cached checkpoint" in second.stdout
    assert "using cached results" in second.stdout
    refined = run(*args, "--refine", "2")  # a different table: not the cached one
    assert refined.returncode == 0 and "using cached results" not in refined.stdout
    assert "rd+refine" in refined.stdout


def test_bad_input_gives_a_clear_error():
    out = run("prune", "--model", "lenet5", "--target", "1.5")
    assert out.returncode == 2 and "[0, 1)" in out.stderr
    out = run("baselines", "--model", "resnet21")
    assert out.returncode == 2 and "unknown model" in out.stderr
