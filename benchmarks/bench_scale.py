"""What RD's curves cost at the sizes people prune, and what each lever saves: Hugging Face GPT-2
shapes built from configs (random weights, the 50,257-token vocabulary, tied head; ``--samples``
sequences of ``--tokens`` tokens) and torchvision's ViT-B/16 and ResNet-50 (random weights,
``--samples`` images of 224 × 224), one ``--grid`` of amounts. For each model, on the first
``--layers`` prunable layers (the cost is per layer, so a few stand for all; the projection to
every layer is printed):

- ``pass``: one bare forward pass of the calibration batch (the first call: no warm-up);
- ``reference``: ``rd.curves(method="reference")``, one full pass per (layer, amount);
- ``fast``: the default path (GPT-2 cannot be traced: replay of what precedes each weight);
- ``fast+head``: the default path measured on the head's input (``head="lm_head"``: the logits'
  squared error through the head's Gram matrix, exact; GPT-2 shapes only);
- ``local``: ``rd.local_curves`` (with ``head="lm_head"`` on GPT-2), an approximation: each layer
  measured at its block's output, scaled by one probe per block; always every layer (its cost is
  not per layer), so its seconds are the whole model's;
- ``agree``: the exact-vs-approximate agreement, on every layer: the exact curves (the fast path,
  with the head lever on GPT-2) and the block-local ones, the RD allocation from each at every
  ``--targets`` sparsity, and each allocation's measured output distortion on the calibration
  batch (``local ÷ exact``, held by ``rdprune.core.local.TOLERANCE``), beside LAMP's, and the
  share of RD's gain over LAMP the block-local allocation keeps (``bench_local.py``'s comparison);
  its seconds are the exact curves', ``local_seconds`` the approximate ones';
- ``stacked``: what batching amounts through replay could save at most: the model's body (GPT-2
  without its head) on ``grid - 1`` copies of the batch at once, against ``grid - 1`` passes of
  one copy (a stacked replay still runs the same arithmetic after the pruned layer; only the
  per-pass overhead can go).

Each path runs in its own process, so ``peak MB`` (maximum resident memory) is its own. Printed:
seconds, ratios to the reference measured in the same run (same model, same samples), the largest
relative difference of the curves from the reference (exact levers: float noise), the minutes
projected to all layers, and the growth of each path's seconds with model size (÷ the first
model's, same samples) and with calibration size (``--samples`` takes several: ÷ the first's,
same model).

    python benchmarks/bench_scale.py --models 7M 30M --layers 2 --samples 8
    python benchmarks/bench_scale.py --models 124M --layers 1 --samples 32 --paths fast+head
    python benchmarks/bench_scale.py --models 124M --samples 32 --paths pass local
    python benchmarks/bench_scale.py --models 7M 30M 124M --samples 8 --paths agree
    python benchmarks/bench_scale.py --models 7M 30M --samples 4 8 16 --paths pass reference stacked
    python benchmarks/bench_scale.py --models vit_b_16 resnet50 --layers 1 --samples 8
    python benchmarks/bench_scale.py --models vit_b_16 resnet50 --layers 1 --samples 8 \
        --paths reference fast --max-batch 256
    python benchmarks/bench_scale.py --device cuda
"""
import argparse
import json
import subprocess
import sys
import time

SHAPES = {"7M": (4, 128, 4), "30M": (6, 384, 6), "124M": (12, 768, 12)}  # blocks, width, heads
VISION = ("vit_b_16", "resnet50")  # torchvision at 224 px
PATHS = ("pass", "reference", "fast", "fast+head", "local", "agree", "stacked")


def build(name: str, samples: int, tokens: int, device: str):
    """(model, calibration batch, the head's name for head= or None)."""
    import torch
    torch.manual_seed(0)
    if name in VISION:
        import torchvision.models as tvm
        model = getattr(tvm, name)(num_classes=1000).eval()
        if name == "vit_b_16":  # torchvision zeroes the ViT's head: its output would be constant
            torch.nn.init.normal_(model.heads.head.weight, std=0.02)
        return model.to(device), torch.randn(samples, 3, 224, 224, device=device), None
    from transformers import GPT2Config, GPT2LMHeadModel
    n_layer, n_embd, n_head = SHAPES[name]
    cfg = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, n_positions=max(tokens, 128),
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = GPT2LMHeadModel(cfg).eval().to(device)
    return model, torch.randint(0, cfg.vocab_size, (samples, tokens), device=device), "lm_head"


def one(args) -> dict:
    """Run one (model, path) and return its measurements (in a child process)."""
    import resource

    import torch

    import rdprune as rp
    model, x, head = build(args.one_model, args.samples, args.tokens, args.device)
    layers = list(rp.masks.prunable(model))
    out = dict(model=args.one_model, path=args.one_path,
               params=sum(p.numel() for p in model.parameters()), all_layers=len(layers))
    tic = time.perf_counter()
    if args.one_path == "pass":
        with torch.no_grad():
            model(x)
        sync(x)
        out["seconds"] = time.perf_counter() - tic
    elif args.one_path == "local":
        rp.rd.local_curves(model, x, grid=args.grid, head=head, cache=False,
                           max_batch=args.max_batch)
        out["seconds"] = time.perf_counter() - tic
        out["layers"] = len(layers)
    elif args.one_path == "agree":
        out.update(agreement(model, x, head, args, tic), layers=len(layers))
    elif args.one_path == "stacked":
        out.update(stacked(model, x, head, args.grid - 1))
    else:
        kw = dict(grid=args.grid, layers=layers[:args.layers], cache=False, progress=False,
                  max_batch=args.max_batch)
        if args.one_path == "reference":
            kw["method"] = "reference"
        if args.one_path == "fast+head":
            kw["head"] = head
        c = rp.rd.curves(model, x, **kw)
        out["seconds"] = time.perf_counter() - tic
        out["distortion"] = c["distortion"].tolist()
        out["layers"] = args.layers
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if x.is_cuda:  # the accelerator's own peak, beside the process's resident memory
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def sync(x) -> None:
    """Wait for the accelerator, so that the clock reads finished work (a no-op on a CPU)."""
    import torch
    if x.is_cuda:
        torch.cuda.synchronize()


def agreement(model, x, head, args, tic) -> dict:
    """Exact and block-local curves on every layer, and per target the measured output distortion
    of the RD allocation from each (and LAMP's)."""
    import rdprune as rp
    from bench_local import measured, ratios
    kw = dict(grid=args.grid, head=head, cache=False, max_batch=args.max_batch)
    exact = rp.rd.curves(model, x, progress=False, **kw)
    seconds = time.perf_counter() - tic
    tic = time.perf_counter()
    near = rp.rd.local_curves(model, x, **kw)
    out = dict(seconds=seconds, local_seconds=time.perf_counter() - tic)
    for t in args.targets:  # bench_local.py's comparison, LAMP beside
        d, _ = measured(model, x, t, dict(rd=exact, local=near), baselines=("lamp",), batch=8)
        r = ratios(d, "local", ("lamp",))
        out.update({f"local/exact@{t:g}": r["measured_ratio"], f"lamp/exact@{t:g}": r["lamp_ratio"],
                    f"gain_kept@{t:g}": r["gain_kept"]})
    return out


def stacked(model, x, head, copies: int) -> dict:
    """Seconds of the body on ``copies`` stacked batches at once, and of one batch (best of two,
    after a warm-up pass)."""
    import torch
    body = model.transformer if head else model  # GPT-2's body: the head lever removes the head

    def best(inputs):
        with torch.no_grad():
            body(inputs[:1])
            times = []
            for _ in range(2):
                sync(inputs)
                tic = time.perf_counter()
                body(inputs)
                sync(inputs)
                times.append(time.perf_counter() - tic)
        return min(times)
    one_copy = best(x)
    return dict(seconds=best(torch.cat([x] * copies)), one_copy_seconds=one_copy, copies=copies)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["7M", "30M"], choices=[*SHAPES, *VISION])
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--samples", type=int, nargs="+", default=[8])
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--grid", type=int, default=11)
    p.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.6, 0.7])
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-batch", type=int, default=None,
                   help="samples through a downstream pass at once (amounts x samples; default: "
                   "rdprune.core.sweep.default_max_batch)")
    p.add_argument("--one-model", help=argparse.SUPPRESS)
    p.add_argument("--one-path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one_model:
        args.samples = args.samples[0]
        print(json.dumps(one(args)))
        return
    import numpy as np
    import pandas as pd
    rows = []
    for m in args.models:
        for n in args.samples:
            for path in [q for q in args.paths if not (q == "fast+head" and m in VISION)]:
                cmd = [sys.executable, __file__, "--one-model", m, "--one-path", path,
                       f"--samples={n}", "--targets", *map(str, args.targets),
                       *[f"--{k}={v}" for k, v in (("layers", args.layers), ("tokens", args.tokens),
                                                   ("grid", args.grid), ("device", args.device))],
                       *([f"--max-batch={args.max_batch}"] if args.max_batch else [])]
                got = subprocess.run(cmd, capture_output=True, text=True)
                if got.returncode:
                    print(got.stderr[-2000:], file=sys.stderr)
                    raise SystemExit(f"{m} {path} failed")
                rows.append(dict(json.loads(got.stdout.strip().splitlines()[-1]), samples=n))
                print(f"{m:>8} {n:>4} {path:>10}: {rows[-1]['seconds']:8.2f} s", flush=True)
    df = pd.DataFrame(rows)
    table, per_layer = [], []
    for (m, n), part in df.groupby(["model", "samples"], sort=False):
        by = part.set_index("path")
        ref = by.loc["reference"] if "reference" in by.index else None
        for path, r in by.iterrows():
            row = dict(model=m, params_M=r["params"] / 1e6, samples=n, path=path,
                       seconds=r["seconds"], peak_MB=r["peak_mb"])
            if pd.notna(r.get("peak_gpu_mb")):
                row["peak_GPU_MB"] = r["peak_gpu_mb"]
            per_layer.append(r["seconds"] / (r["layers"] if pd.notna(r.get("layers")) else 1))
            if path == "stacked":
                row["x_separate_passes"] = r["seconds"] / (r["one_copy_seconds"] * r["copies"])
            elif path != "pass":
                row["minutes_all_layers"] = r["seconds"] / r["layers"] * r["all_layers"] / 60
                if ref is not None and path != "agree":
                    row["x_reference"] = (r["seconds"] / r["layers"]) / (ref["seconds"] / ref["layers"])
                if ref is not None and isinstance(r.get("distortion"), list):
                    a, b = np.array(r["distortion"]), np.array(ref["distortion"])
                    row["max_rel_diff"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))
                if "pass" in by.index and path != "agree":
                    row["x_bare_passes"] = r["seconds"] / (by.loc["pass", "seconds"]
                                                           * r["layers"] * (args.grid - 1))
            if path == "agree":
                row["local_seconds"] = r["local_seconds"]
                row.update({k: r[k] for k in r.index if "/exact@" in k or "gain_kept@" in k})
            table.append(row)
    table = pd.DataFrame(table)
    per_layer = pd.Series(per_layer, index=table.index)  # seconds per layer (pass, stacked: 1)

    def first(keys):
        return per_layer.groupby([table[k] for k in keys]).transform("first")
    table["growth_model"] = per_layer / first(["samples", "path"])
    table["growth_samples"] = per_layer / first(["model", "path"])
    print(f"\nsequences (or images) x {args.tokens} tokens, grid {args.grid}, first {args.layers} "
          f"layer(s) (local, agree: all), device {args.device}, torch threads "
          f"{__import__('torch').get_num_threads()}; growth: seconds per layer ÷ the first model's "
          f"(same samples, path) and ÷ the first samples' (same model, path)")
    print(table.round(4).to_string(index=False))

if __name__ == "__main__":
    main()
