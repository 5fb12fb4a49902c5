"""RD curves across processes: one process with 2 threads against 2 torch.distributed (gloo)
processes with 1 thread each, and the cost-balanced split against a split by layer count, on
the machine it runs on. ResNet-32 (random weights: only the time matters), ``--calib`` images, a
``--grid``-point grid, no cache. Wall time of the whole curve call, measured inside the run
(process start and model build excluded), one configuration after the other on an otherwise
idle machine. Writes benchmarks/distributed.csv.

    python benchmarks/bench_distributed.py [--model resnet32] [--calib 256] [--grid 51]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd

WORKER = textwrap.dedent('''
    import datetime, json, os, sys, time, torch
    import rdprune as rp
    from rdprune.core import distributed as DI
    model_name, n, grid, split = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ranks = int(os.environ.get("WORLD_SIZE", "1"))
    if ranks > 1:
        import torch.distributed as dist
        dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=3600))
        if split == "count":
            DI.share = lambda cost, r: DI.by_count(list(cost), r)
    torch.manual_seed(0)
    model = rp.models.build(model_name).eval()
    calib = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    if ranks > 1:
        dist.barrier()
    tic = time.perf_counter()
    out = rp.rd.curves(model, calib, grid=grid, cache=False, progress=False)
    seconds = time.perf_counter() - tic
    if DI.world()[0] == 0:
        print("RESULT", json.dumps(dict(seconds=seconds, layers=int(out.layer.nunique()))))
    if ranks > 1:
        dist.destroy_process_group()
''')


def run(script, args, procs, threads, split="cost"):
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if procs == 1:
        cmd = [sys.executable, str(script)]
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(procs),
               "--master-addr", "127.0.0.1", "--master-port", str(port), str(script)]
    out = subprocess.run(cmd + [args.model, str(args.calib), str(args.grid), split],
                         capture_output=True, text=True, env=env, timeout=7200)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(line.split(" ", 1)[1])


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet32")
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--grid", type=int, default=51)
    args = p.parse_args()
    script = Path("/tmp") / "rdprune_bench_distributed_worker.py"
    script.write_text(WORKER)
    rows = []
    for name, procs, threads, split in [("1 process x 2 threads", 1, 2, "cost"),
                                        ("2 processes x 1 thread, cost split", 2, 1, "cost"),
                                        ("2 processes x 1 thread, count split", 2, 1, "count")]:
        r = run(script, args, procs, threads, split)
        rows.append(dict(setting=name, model=args.model, calib=args.calib, grid=args.grid, **r))
        print(rows[-1], flush=True)
    df = pd.DataFrame(rows)
    base = df.seconds.iloc[0]
    df["speedup"] = base / df.seconds
    print(df.to_string(index=False))
    df.to_csv(Path(__file__).with_name("distributed.csv"), index=False)


if __name__ == "__main__":
    main()
