"""Block-local curves (``rd.local_curves``, an approximation) against the exact curves: on the
zoo's trained models (quick recipe) and on a GPT-2 shape from a config (random weights), the time
of each as a ratio measured in the same run, and, per target, the measured output distortion of
the RD allocation from the block-local curves against the exact curves' (the stated tolerance is
``rdprune.core.local.TOLERANCE``), beside LAMP's and OWL's allocations: ``gain_kept`` is the
share of exact RD's distortion reduction over LAMP that the block-local allocation keeps
(1 = all of it; NaN where RD does not beat LAMP), for both ways of scaling the curves
(``scale="block"``, the default, and ``"layer"``). Writes benchmarks/local.csv.

    python benchmarks/bench_local.py
    python benchmarks/bench_local.py --models resnet20 vit_tiny lm_tiny gpt2_7M --grid 51
"""
import argparse
import time
from pathlib import Path

import pandas as pd
import torch

import rdprune as rp
from rdprune.core import local
from rdprune.lab import data as D

DATA = {"lm_tiny": ("pystdlib", 16), "gpt2_7M": (None, 8)}  # model → (dataset, calibration size)


def model_and_calib(name: str, n_default: int):
    dataset, n = DATA.get(name, ("fashion_mnist", n_default))
    if name == "gpt2_7M":  # bench_scale.py's 7 M shape: 4 blocks of 128, the 50,257 vocabulary
        from transformers import GPT2Config, GPT2LMHeadModel
        torch.manual_seed(0)
        net = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=128, n_head=4, resid_pdrop=0.0,
                                         embd_pdrop=0.0, attn_pdrop=0.0)).eval()
        return net, torch.randint(0, net.config.vocab_size, (n, 128)), "lm_head"
    net = rp.train.pretrained(name, dataset, "quick", seed=0, progress=False, verbose=False)
    return net, D.calibration(dataset, n=n, seed=0), None


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet20", "vit_tiny", "lm_tiny", "gpt2_7M"])
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    p.add_argument("--grid", type=int, default=51)
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("local.csv"))
    args = p.parse_args()
    rows = []
    for name in args.models:
        net, calib, head = model_and_calib(name, args.calib)
        kw = dict(grid=args.grid, cache=False, head=head)
        tic = time.perf_counter()
        exact = rp.rd.curves(net, calib, progress=False, **kw)
        t_exact = time.perf_counter() - tic
        near, seconds = {}, {}
        for scale in local.SCALES:
            tic = time.perf_counter()
            near[scale] = rp.rd.local_curves(net, calib, scale=scale, **kw)
            seconds[scale] = time.perf_counter() - tic
        for t in args.targets:
            d, same = measured(net, calib, t, dict(rd=exact, **near), baselines=("lamp", "owl"))
            for scale in local.SCALES:
                rows.append(dict(model=name, scale=scale, target=t, grid=args.grid,
                                 samples=len(calib), blocks=len(near[scale].attrs["blocks"]),
                                 time_ratio=seconds[scale] / t_exact, exact_s=t_exact,
                                 local_s=seconds[scale], same=same[scale],
                                 **ratios(d, scale, ("lamp", "owl")),
                                 tolerance=local.TOLERANCE, threads=torch.get_num_threads()))
        print(pd.DataFrame(rows[-2 * len(args.targets):]).to_string(index=False), flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(args.out, index=False)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))


def measured(net, calib, target, curves: dict, baselines=("lamp",), batch=256):
    """At ``target``: the measured output distortion of the RD allocation from each set of
    ``curves`` (key ``"rd"``: the exact ones) and of each baseline allocator's, and, per set,
    whether its allocation equals the exact one."""
    picks = {k: rp.allocate("rd", net, target, curves=c) for k, c in curves.items()}
    picks.update({b: rp.allocate(b, net, target, **({"calib": calib} if b == "owl" else {}))
                  for b in baselines})
    d = {k: rp.rd.distortion(net, rp.masks.apply(rp.masks.clone(net), a), calib, batch=batch)
         for k, a in picks.items()}
    return d, {k: dict(picks[k]) == dict(picks["rd"]) for k in curves}


def ratios(d: dict, key: str, baselines) -> dict:
    """``key``'s and each baseline's measured distortion ÷ exact RD's, and ``gain_kept``: the
    share of exact RD's reduction over LAMP that ``key`` keeps (NaN where RD does not beat LAMP
    or the exact distortion is zero)."""
    nan = float("nan")
    out = dict(measured_ratio=d[key] / d["rd"] if d["rd"] > 0 else nan,
               **{f"{b}_ratio": d[b] / d["rd"] if d["rd"] > 0 else nan for b in baselines})
    gain = d["lamp"] - d["rd"]
    out["gain_kept"] = (d["lamp"] - d[key]) / gain if gain > 0 else nan
    return out


if __name__ == "__main__":
    main()
