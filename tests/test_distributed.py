"""RD curves under torch.distributed: two processes on this machine (gloo, 127.0.0.1 only),
spawned here and stopped by a timeout; their curves must equal one process's exactly."""
import os
import socket
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
import torch

import rdprune as rp
from rdprune.core import distributed as DI

WORKER = textwrap.dedent('''
    import os, sys, datetime, torch, torch.distributed as dist
    import rdprune as rp
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://",
                            timeout=datetime.timedelta(seconds=int(os.environ.get("WAIT", 120))))
    torch.manual_seed(0)
    model = rp.models.build("resnet20").eval()
    calib = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    if os.environ.get("OTHER_CALIB") and dist.get_rank() == 1:
        calib = calib + 1
    if os.environ.get("DIE") and dist.get_rank() == 1:  # dies right after its first layer is saved
        import rdprune.core.curves as C
        save = C.atomic_write_bytes
        C.atomic_write_bytes = lambda path, data: (save(path, data), os._exit(3))
    try:
        out = rp.rd.curves(model, calib, grid=4, progress=False, cache=os.environ["CACHE"] == "1")
        out.to_csv(sys.argv[1] + f"/rank{dist.get_rank()}.csv", index=False)
        print("PATHS", dist.get_rank(), sorted(set(out.attrs["paths"].values())))
    except ValueError as e:
        print("REFUSED", e)
    if not os.environ.get("DIE"):
        dist.barrier()  # leave together: a rank that tears down first can fail the other's exit
    dist.destroy_process_group()
''')


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(tmp_path, cache, check=True, **extra):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = _free_port()
    procs = []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1",
               "RDPRUNE_DATA": str(tmp_path / "data"), "CACHE": "1" if cache else "0", **extra}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=300)[0])
    finally:
        for p in procs:
            p.kill()
    if check:
        assert all(p.returncode == 0 for p in procs), outs
    return outs if check else (outs, [p.returncode for p in procs])


def one_process(cache: bool):
    """The workers' curves from one process with one thread (as each rank has)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = rp.models.build("resnet20").eval()
        calib = torch.randn(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
        return rp.rd.curves(model, calib, grid=4, progress=False, cache=cache)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def single():
    """One process, no cache."""
    return one_process(cache=False)


def test_two_ranks_give_every_rank_the_single_process_curves(tmp_path, single):
    """Each rank computes its share, caches it and gathers the rest (the values travel by
    all_gather, not through the files); a rerun reads everything from the cache."""
    outs = launch(tmp_path, cache=True)
    for rank in range(2):
        got = pd.read_csv(tmp_path / f"rank{rank}.csv")
        pd.testing.assert_frame_equal(got, single.reset_index(drop=True), check_exact=True,
                                      check_dtype=False)
    assert any("rank 1" in o for o in outs) and any("rank 0" in o for o in outs)  # both worked
    # each rank wrote its own layers; a rerun reads them all, computes nothing
    assert len(list((tmp_path / "data" / "curves").glob("*/*.csv"))) == single.layer.nunique()
    again = launch(tmp_path, cache=True)
    assert all("PATHS" in o and "'cached'" in o and "fast" not in o for o in again), again


def test_a_rank_killed_during_curves_loses_only_its_unfinished_layers(tmp_path, single,
                                                                      monkeypatch):
    """Rank 1 dies right after saving its first layer; rank 0 saves all of its share and then
    fails at the gather. A rerun (here one process) computes exactly the layers not on disk and
    returns the single-process curves."""
    outs, codes = launch(tmp_path, cache=True, check=False, DIE="1", WAIT="20")
    assert codes[1] == 3 and codes[0] != 0, outs
    files = list((tmp_path / "data" / "curves").glob("*/*.csv"))
    saved = {f.stem for f in files}
    layers = list(single.layer.unique())
    assert 1 < len(saved) < len(layers)  # rank 0's share and rank 1's first layer
    monkeypatch.setenv("RDPRUNE_DATA", str(tmp_path / "data"))
    again = one_process(cache=True)
    paths = again.attrs["paths"]
    assert {k for k, v in paths.items() if v == "cached"} == saved
    assert {k for k, v in paths.items() if v != "cached"} == set(layers) - saved
    pd.testing.assert_frame_equal(again.reset_index(drop=True), single.reset_index(drop=True),
                                  check_exact=True, check_dtype=False)


def test_ranks_that_disagree_on_the_calibration_are_refused(tmp_path):
    outs = launch(tmp_path, False, OTHER_CALIB="1")
    assert all("REFUSED" in o and "calibration batch" in o for o in outs), outs


def test_the_split_balances_cost_not_count():
    cost = {"a": 10.0, "b": 1.0, "c": 1.0, "d": 1.0, "e": 7.0}
    parts = DI.share(cost, 2)
    loads = [sum(cost[k] for k in p) for p in parts]
    assert sorted(sum(parts, [])) == sorted(cost) and max(loads) == 10.0
    naive = [sum(cost[k] for k in p) for p in DI.by_count(list(cost), 2)]
    assert max(naive) > max(loads)


def test_the_curves_command_under_torchrun(lenet, tmp_path):
    """``torchrun --nproc-per-node 2 -m rdprune curves``: rank 0 loads the cached LeNet first,
    both ranks compute their share (in a fresh data folder: nothing cached), rank 0 says where
    the curves are."""
    import shutil
    ckpt = rp.train.checkpoint_path("lenet5", "fashion_mnist", "quick", 0)
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(ckpt, tmp_path / "checkpoints" / ckpt.name)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RDPRUNE_DATA": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                          "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
                          "-m", "rdprune", "curves", "--model", "lenet5", "--calib-n", "32",
                          "--grid", "5", "--quiet"], capture_output=True, text=True, timeout=300,
                         env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "over 2 process(es)" in out.stdout and "(rank 1)" in out.stdout
    assert out.stdout.count("curves: ") == 1  # rank 0 only


DDP_SETUP = textwrap.dedent('''
    import torch
    import rdprune as rp
    from rdprune import masks as M
    from rdprune.core.loops import TensorLoader
    torch.manual_seed(0)
    net = rp.models.build("lenet5")
    M.apply(net, {k: 0.5 for k in M.prunable(net)})
    g = torch.Generator().manual_seed(2)
    loader = TensorLoader(torch.randn(96, 1, 28, 28, generator=g),
                          torch.randint(0, 10, (96,), generator=g), 32, shuffle=True, seed=3)
''')
DDP_WORKER = textwrap.dedent('''
    import sys, datetime, torch, torch.distributed as dist
    from rdprune.core.loops import fine_tune
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="env://", timeout=datetime.timedelta(seconds=120))
''') + DDP_SETUP + textwrap.dedent('''
    fine_tune(net, loader, 6, lr=1e-3, progress=False)
    torch.save(net.state_dict(), sys.argv[1] + f"/ddp{dist.get_rank()}.pt")
    torch.manual_seed(0)
    bn = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                             torch.nn.Flatten(), torch.nn.Linear(4 * 26 * 26, 10))
    fine_tune(bn, loader, 3, lr=1e-3, progress=False)
    torch.save(bn.state_dict(), sys.argv[1] + f"/bn{dist.get_rank()}.pt")
    dist.destroy_process_group()
''')


def test_ddp_fine_tuning_keeps_ranks_identical_masks_intact_and_equals_one_process(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_WORKER)
    port, procs = _free_port(), []
    for rank in range(2):
        env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "RANK": str(rank), "WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        outs = [p.communicate(timeout=300)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), outs
    a, b = (torch.load(tmp_path / f"ddp{r}.pt") for r in range(2))
    assert all(torch.equal(a[k], b[k]) for k in a)  # the ranks hold the same weights
    bn0, bn1 = (torch.load(tmp_path / f"bn{r}.pt") for r in range(2))
    assert all(torch.equal(bn0[k], bn1[k]) for k in bn0)  # BatchNorm statistics included
    for k in a:
        if k.endswith("weight_mask"):
            assert (a[k.replace("_mask", "")][~a[k]] == 0).all()  # masked weights still zero
    # one process on the whole batches: the same steps, up to float summation order
    from rdprune.core.loops import fine_tune
    setup: dict = {}
    exec(DDP_SETUP, setup)  # the workers' model and loader, built the same way
    fine_tune(setup["net"], setup["loader"], 6, lr=1e-3, progress=False)
    one = setup["net"].state_dict()
    for k in a:  # AdamW's steps are ~lr = 1e-3: differences of 1e-6 are summation order only
        if a[k].is_floating_point():
            assert torch.allclose(a[k], one[k], rtol=1e-4, atol=1e-6), k


CRASH = textwrap.dedent('''
    """A plugin (--import) that kills the process right after round 1 is saved: an interruption."""
    import os
    from rdprune.lab import pipeline
    save = pipeline._checkpoint

    def crash(out, config, model, rows):
        save(out, config, model, rows)
        if rows[-1]["round"] == 1:
            os._exit(5)

    pipeline._checkpoint = crash
''')


def test_an_iterative_schedule_under_torchrun_matches_one_process(lenet, tmp_path):
    """Two rounds (20 %, then 36 %) of RD with fine-tuning, two ranks against one process: the
    same rounds and columns, every target met, the same allocation and top-1 within a point (DDP
    averages two half-batch gradients: the weights differ by float summation order only). The
    two-rank run is first interrupted after round 1 (rank 0 dies) and resumes from there."""
    import shutil
    ckpt = rp.train.checkpoint_path("lenet5", "fashion_mnist", "quick", 0)
    (tmp_path / "checkpoints").mkdir()
    shutil.copy(ckpt, tmp_path / "checkpoints" / ckpt.name)
    args = ["-m", "rdprune", "prune", "--model", "lenet5", "--schedule", "iterative",
            "--target", "0.36", "--finetune-steps", "4", "--calib-n", "32", "--grid", "6",
            "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RDPRUNE_DATA": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    (tmp_path / "crash_after_round_1.py").write_text(CRASH)
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one")],
                         capture_output=True, text=True, timeout=300, env=env)

    def two_ranks(*extra):
        return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                               "2", "--master-addr", "127.0.0.1", "--master-port",
                               str(_free_port()), *args, "--out", str(tmp_path / "two"), *extra],
                              capture_output=True, text=True, timeout=300, env=env)
    crashed = two_ranks("--import", "crash_after_round_1")  # rank 0 dies after round 1's save
    assert crashed.returncode != 0
    first = pd.read_csv(tmp_path / "two" / "results.csv")
    assert list(first["round"]) == [0, 1]
    two = two_ranks()
    assert one.returncode == 0 and two.returncode == 0, (one.stderr[-1500:], two.stderr[-1500:])
    assert two.stdout.count("resuming") == 1 and "after round 1" in two.stdout
    assert two.stdout.count("results: ") == 1  # rank 0 alone reports and writes
    a, b = (pd.read_csv(tmp_path / d / "results.csv") for d in ("one", "two"))
    pd.testing.assert_frame_equal(b.iloc[:2], first)  # round 1 kept, not recomputed
    assert list(a.columns) == list(b.columns) and list(a["round"]) == list(b["round"]) == [0, 1, 2]
    assert (b.sparsity >= b.target - 1e-9).all()  # every round meets its target
    # the same allocation unless a float-order difference flips one DP choice (one grid step)
    assert (a.sparsity - b.sparsity).abs().max() <= 0.02
    assert (a.top1 - b.top1).abs().max() <= 0.01
