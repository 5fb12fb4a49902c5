"""Generic training loops on any model and loader: :func:`fit` (AdamW, optional distillation),
:func:`fine_tune` (mask-preserving), :func:`evaluate` and :func:`recalibrate_bn`. The structured
methods (HBGS, JointPruning) and the lab's recipes use them; they know no dataset name."""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..util import LR_SCHEDULES, check_choice
from . import masks as M
from .distortion import output_tensor
from .distributed import world


def device(spec: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when present, else the CPU. An unavailable device is a clear error."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {spec!r}; use 'auto', 'cpu' or 'cuda[:N]'") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {spec!r} asked for, but this machine has no CUDA GPU; "
                         "use --device cpu (or auto)")
    return dev


def check_steps(steps, what: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 0:
        raise ValueError(f"{what} must be a whole number >= 0, got {steps!r}")
    return int(steps)


def batches(loader, steps: int):
    """Cycle ``loader`` for exactly ``steps`` batches."""
    check_steps(steps)
    done = 0
    while done < steps:
        empty = True
        for batch in loader:
            empty = False
            if done == steps:
                return
            yield batch
            done += 1
        if empty:
            raise ValueError("the training loader yields no batches")


def per_token(out: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether ``out`` holds a language model's per-token logits (N, T, V) for next-token labels
    ``y`` (N, T): the class axis last. Anything else keeps PyTorch's convention, classes on
    axis 1 ((N, C) against (N,), dense (N, C, H, W) against (N, H, W))."""
    return out.dim() > 2 and tuple(out.shape[:-1]) == tuple(y.shape)


def token_loss(out: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of class logits against labels, or, for a language model
    (:func:`per_token`), of per-token logits against the next tokens: the mean (or sum) over
    tokens, labels -100 ignored as in Hugging Face."""
    if per_token(out, y):
        return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction=reduction)
    return F.cross_entropy(out, y, reduction=reduction)


def fit(model: nn.Module, loader, steps: int, *, lr: float = 1e-3, weight_decay: float = 0.01,
        schedule: str = "cosine", teacher: nn.Module | None = None, temperature: float = 2.0,
        dev="auto", progress: bool = True, desc: str = "train") -> nn.Module:
    """AdamW for ``steps`` batches. Masked weights stay exactly zero after every step. With a
    ``teacher``, the loss adds KL distillation (temperature ``temperature``).

    Under ``torchrun`` (an initialised process group of several ranks) the model is wrapped in
    ``DistributedDataParallel``: every rank reads the same loader (the same seed gives the same
    global batches), trains on its own contiguous share of each batch (the global batch size is
    unchanged; a batch smaller than the number of ranks goes whole to every rank), gradients are
    averaged with each rank weighed by its share of the samples, masks are enforced on every
    rank after every step, BatchNorm buffers are taken from rank 0 at the end, and only rank 0
    shows progress. Every rank ends with the same weights and buffers. BatchNorm normalises over
    each rank's share during training, so a BN network's steps are not exactly one process's."""
    check_steps(steps)
    check_choice("learning-rate schedule", schedule, LR_SCHEDULES)
    dev = device(dev)
    model.to(dev).train()
    rank, ranks = world()
    net = model
    if ranks > 1:  # DDP: gradients averaged over ranks, each a disjoint share of every batch
        from torch.nn.parallel import DistributedDataParallel
        net = DistributedDataParallel(model, device_ids=[dev] if dev.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = (torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
             if schedule == "cosine" else None)
    bar = tqdm(batches(loader, steps), total=steps, desc=desc, disable=not progress or rank > 0,
               leave=False)
    for x, y in bar:
        share = 1.0
        if ranks > 1 and len(x) >= ranks:  # this rank's share of the global batch
            n = len(x)
            x, y = x.tensor_split(ranks)[rank], y.tensor_split(ranks)[rank]
            share = ranks * len(x) / n  # DDP averages ranks: weigh by samples, as one process
        x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
        out = output_tensor(net(x))
        loss = token_loss(out, y)
        if teacher is not None:
            with torch.no_grad():
                t = output_tensor(teacher(x))
            o, t, axis = out, t, 1
            if per_token(out, y):  # a language model: per token, vocabulary last
                o, t, axis = out.flatten(0, -2), t.flatten(0, -2), -1
            loss = loss + temperature ** 2 * F.kl_div(
                F.log_softmax(o / temperature, axis), F.softmax(t / temperature, axis),
                reduction="batchmean")
        opt.zero_grad(set_to_none=True)
        (loss * share).backward()
        opt.step()
        M.enforce(model)
        if sched:
            sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    if ranks > 1:  # BatchNorm statistics of the last step differ per rank: take rank 0's
        import torch.distributed as dist
        for b in model.buffers():
            dist.broadcast(b.data, 0)
    return model.eval()


@torch.inference_mode()
def evaluate(model: nn.Module, loader, dev=None) -> dict[str, float]:
    """Top-1 accuracy (fraction) and mean cross-entropy over ``loader``; for a language model
    (per-token logits, next-token labels: :func:`per_token`) both are per token, labels -100
    skipped, and ``perplexity`` (e^loss) is added."""
    dev = next(model.parameters()).device if dev is None else device(dev)
    was = model.training
    model.eval()
    correct, loss, n, tokens = 0, 0.0, 0, False
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        out = output_tensor(model(x))
        loss += token_loss(out, y, reduction="sum").item()
        tokens = per_token(out, y)
        valid = y != -100  # Hugging Face's ignored label
        correct += ((out.argmax(-1 if tokens else 1) == y) & valid).sum().item()
        n += int(valid.sum())
    model.train(was)
    if n == 0:
        raise ValueError("the evaluation loader yields no labelled samples")
    result = {"top1": correct / n, "loss": loss / n}
    if tokens:
        result["perplexity"] = math.exp(min(result["loss"], 700.0))
    return result


@torch.no_grad()
def recalibrate_bn(model: nn.Module, x: torch.Tensor, batch: int = 256) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on inputs ``x``, in place: the equally
    weighted average of the statistics of each ``batch`` images (one batch: exactly those of
    ``x``); no weight changes. Pruning shifts the activations each BN normalises, so a pruned
    network with the dense network's statistics can collapse although its weights are fine.
    Returns the model in eval mode."""
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or len(x) == 0:
        raise ValueError("recalibrate_bn needs a non-empty batch of inputs (N, ...)")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: the exact mean over the batches
    model.train()
    dev = next(model.parameters()).device
    try:
        for xb in torch.split(x, batch):
            model(xb.to(dev))
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom
        model.eval()
    return model


def fine_tune(model, loader, steps: int, lr: float = 3e-4, schedule: str = "constant",
              **kw) -> nn.Module:
    """Mask-preserving fine-tune: a constant learning rate by default, as the RD authors;
    ``schedule="cosine"`` decays it to zero over the ``steps``."""
    kw.setdefault("desc", "fine-tune")
    return fit(model, loader, steps, lr=lr, schedule=schedule, **kw)


class TensorLoader:
    """A minimal, fast DataLoader over in-memory tensors: shuffles with its own seeded generator
    and, for CIFAR, applies random crop (pad 4) and horizontal flip on whole batches."""

    def __init__(self, x, y, batch_size, shuffle, augment=False, seed=0):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.augment = shuffle, augment
        self.gen = torch.Generator().manual_seed(seed)
        self.dataset = x  # len(loader.dataset) works as with torch loaders

    def __len__(self):
        return (len(self.x) + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        n = len(self.x)
        order = torch.randperm(n, generator=self.gen) if self.shuffle else torch.arange(n)
        for i in range(0, n, self.batch_size):
            idx = order[i:i + self.batch_size]
            xb = self.x[idx]
            if self.augment:
                xb = _crop_flip(xb, self.gen)
            yield xb, self.y[idx]


def _crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    dx, dy = torch.randint(0, 9, (2,), generator=gen).tolist()
    out = padded[:, :, dy:dy + h, dx:dx + w]
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), out.flip(3), out)
