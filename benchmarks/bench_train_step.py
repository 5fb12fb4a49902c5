"""Milliseconds per training step of the quick ResNet-20 recipe (AdamW, batch 128, Fashion-MNIST)
with whichever rdprune is importable: run it alone, once per checkout you compare
(``PYTHONPATH=<checkout>/lib python benchmarks/bench_train_step.py``), to tell a slower machine
from slower code. Prints the step time and the thread count."""
import argparse
import time

import torch

import rdprune as rp


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--model", default="resnet20")
    args = p.parse_args()
    torch.manual_seed(0)
    model = rp.models.build(args.model, 10, 1)
    loader, _ = rp.data.loaders("fashion_mnist", 128, seed=0)
    rp.train.fit(model, loader, 5, progress=False)  # warm-up
    tic = time.perf_counter()
    rp.train.fit(model, loader, args.steps, progress=False)
    ms = (time.perf_counter() - tic) / args.steps * 1000
    print(f"{args.model}: {ms:.0f} ms per step ({torch.get_num_threads()} threads, "
          f"rdprune from {rp.__file__})")


if __name__ == "__main__":
    main()
