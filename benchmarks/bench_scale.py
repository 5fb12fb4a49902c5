"""What RD's curves cost at the sizes people prune, and what each lever saves: Hugging Face GPT-2
shapes built from configs (random weights, the 50,257-token vocabulary, tied head; ``--samples``
sequences of ``--tokens`` tokens) and torchvision's ViT-B/16 and ResNet-50 (random weights,
``--samples`` images of 224 × 224), one ``--grid`` of amounts. For each model, on the first
``--layers`` prunable layers (the cost is per layer, so a few stand for all; the projection to
every layer is printed):

- ``pass``: one bare forward pass of the calibration batch;
- ``reference``: ``rd.curves(method="reference")``, one full pass per (layer, amount);
- ``fast``: the default path (GPT-2 cannot be traced: replay of what precedes each weight);
- ``fast+head``: the default path measured on the head's input (``head="lm_head"``: the logits'
  squared error through the head's Gram matrix, exact; GPT-2 shapes only);
- ``local``: ``rd.local_curves`` (with ``head="lm_head"`` on GPT-2), an approximation: each layer
  measured at its block's output, scaled by one probe per block; always every layer (its cost is
  not per layer), so its seconds are the whole model's; its agreement with the exact curves'
  allocation is ``bench_local.py``'s.

Each path runs in its own process, so ``peak MB`` (maximum resident memory) is its own. Printed:
seconds, ratios to the reference measured in the same run, the largest relative difference of the
curves from the reference (exact levers: float noise), and the minutes projected to all layers.

    python benchmarks/bench_scale.py --models 7M 30M --layers 2 --samples 8
    python benchmarks/bench_scale.py --models 124M --layers 1 --samples 32 --paths fast+head
    python benchmarks/bench_scale.py --models 124M --samples 32 --paths pass local
    python benchmarks/bench_scale.py --models vit_b_16 resnet50 --layers 1 --samples 8
    python benchmarks/bench_scale.py --device cuda
"""
import argparse
import json
import subprocess
import sys
import time

SHAPES = {"7M": (4, 128, 4), "30M": (6, 384, 6), "124M": (12, 768, 12)}  # blocks, width, heads
VISION = ("vit_b_16", "resnet50")  # torchvision at 224 px
PATHS = ("pass", "reference", "fast", "fast+head", "local")


def build(name: str, samples: int, tokens: int, device: str):
    """(model, calibration batch, the head's name for head= or None)."""
    import torch
    torch.manual_seed(0)
    if name in VISION:
        import torchvision.models as tvm
        model = getattr(tvm, name)(num_classes=1000).eval().to(device)
        return model, torch.randn(samples, 3, 224, 224, device=device), None
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
        out["seconds"] = time.perf_counter() - tic
    elif args.one_path == "local":
        rp.rd.local_curves(model, x, grid=args.grid, head=head, cache=False)
        out["seconds"] = time.perf_counter() - tic
        out["layers"] = len(layers)
    else:
        kw = dict(grid=args.grid, layers=layers[:args.layers], cache=False, progress=False)
        if args.one_path == "reference":
            kw["method"] = "reference"
        if args.one_path == "fast+head":
            kw["head"] = head
        c = rp.rd.curves(model, x, **kw)
        out["seconds"] = time.perf_counter() - tic
        out["distortion"] = c["distortion"].tolist()
        out["layers"] = args.layers
    out["peak_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["7M", "30M"], choices=[*SHAPES, *VISION])
    p.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--grid", type=int, default=11)
    p.add_argument("--device", default="cpu")
    p.add_argument("--one-model", help=argparse.SUPPRESS)
    p.add_argument("--one-path", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one_model:
        print(json.dumps(one(args)))
        return
    import numpy as np
    import pandas as pd
    rows = []
    for m in args.models:
        for path in [q for q in args.paths if not (q == "fast+head" and m in VISION)]:
            cmd = [sys.executable, __file__, "--one-model", m, "--one-path", path,
                   *[f"--{k}={v}" for k, v in (("layers", args.layers), ("samples", args.samples),
                                               ("tokens", args.tokens), ("grid", args.grid),
                                               ("device", args.device))]]
            got = subprocess.run(cmd, capture_output=True, text=True)
            if got.returncode:
                print(got.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{m} {path} failed")
            rows.append(json.loads(got.stdout.strip().splitlines()[-1]))
            print(f"{m:>5} {path:>10}: {rows[-1]['seconds']:8.2f} s", flush=True)
    df = pd.DataFrame(rows)
    table = []
    for m, part in df.groupby("model", sort=False):
        by = part.set_index("path")
        ref = by.loc["reference"] if "reference" in by.index else None
        for path, r in by.iterrows():
            row = dict(model=m, params_M=r["params"] / 1e6, path=path, seconds=r["seconds"],
                       peak_MB=r["peak_mb"])
            if path != "pass":
                row["minutes_all_layers"] = r["seconds"] / r["layers"] * r["all_layers"] / 60
                if ref is not None and isinstance(r.get("distortion"), list):
                    row["x_reference"] = r["seconds"] / ref["seconds"]
                    a, b = np.array(r["distortion"]), np.array(ref["distortion"])
                    row["max_rel_diff"] = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-30)))
                if "pass" in by.index:
                    row["x_bare_passes"] = r["seconds"] / (by.loc["pass", "seconds"]
                                                           * r["layers"] * (args.grid - 1))
            table.append(row)
    print(f"\n{args.samples} sequences x {args.tokens} tokens, grid {args.grid}, first {args.layers} "
          f"layer(s), device {args.device}, torch threads as set by OMP_NUM_THREADS")
    print(pd.DataFrame(table).round(4).to_string(index=False))


if __name__ == "__main__":
    main()
