"""JointPruning's search (:mod:`rdprune.structured.jointpruning`): the self-adapted stochastic
gradient estimate and the alternating supernet / vector loop."""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ...core.loops import TensorLoader, device
from .space import DIMS, dims_of, project_vector, space_of, target_macs
from .supernet import Supernet


def estimate_gradient(loss_fn, u, sigma, samples: int = 8, generator=None, groups=None):
    """Antithetic Gaussian-smoothing gradient of ``loss_fn`` at ``u``:
    ``g = 1/(2N) sum_i [L(u+s*e_i) - L(u-s*e_i)] e_i / s`` (``s`` per dimension). With ``groups``
    (slices or index arrays), g is divided by its RMS within each group. Returns (g, 2N losses)."""
    u = np.asarray(u, float)
    s = np.broadcast_to(np.asarray(sigma, float), u.shape)
    e = torch.randn(samples, u.size, generator=generator, dtype=torch.float64).numpy()
    lp = np.array([loss_fn(u + s * ei) for ei in e])
    lm = np.array([loss_fn(u - s * ei) for ei in e])
    g = ((lp - lm)[:, None] * e).mean(0) / (2 * s)
    for idx in groups or ():
        rms = np.sqrt(np.mean(g[idx] ** 2))
        if rms > 0:
            g[idx] = g[idx] / rms
    return g, np.r_[lp, lm]


# ----------------------------------------------------------------------------- search
def _cycle(loader):
    while True:
        yield from loader


def _split(train_loader, val_data, val_size, calib_size, gen):
    """(supernet-training loader, held-out (x, y), calibration batch), all from training data."""
    if hasattr(train_loader, "x"):
        x, y, bs = train_loader.x, train_loader.y, train_loader.batch_size
        perm = torch.randperm(len(x), generator=gen)
        nv = 0 if val_data is not None else min(val_size, len(x) // 5)
        val = val_data if val_data is not None else (x[perm[:nv]], y[perm[:nv]])
        xt, yt = x[perm[nv:]], y[perm[nv:]]
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=gen))
        loader = TensorLoader(xt, yt, bs, True, augment=getattr(train_loader, "augment", False),
                              seed=seed)
        return loader, val, xt[:calib_size]
    if val_data is None:
        raise ValueError("a train_loader without in-memory tensors (.x/.y) needs val_data=(x, y)")
    return train_loader, val_data, next(iter(train_loader))[0][:calib_size]


class _Vector:
    """The searched vector: its active entries in [0, 1] coordinates ``u``, moved by a torch
    optimizer (Adam, or heavy-ball momentum) on the estimated gradient and projected back under
    the FLOPs target after every step (the optimizer's moments carry over the projection)."""

    def __init__(self, sp, dims, target, optimizer: str, v_lr: float, sigma: float, steps: int):
        self.sp, self.target, self.sigma, self.steps = sp, target, sigma, steps
        self.act = sp.active(dims)
        self.groups = [np.flatnonzero(sp.active([d])[self.act]) for d in dims]
        self.span = (sp.hi - sp.lo)[self.act]
        self.u = torch.zeros(int(self.act.sum()), dtype=torch.float64, requires_grad=True)
        self.opt = (torch.optim.Adam([self.u], lr=v_lr, betas=(0.9, 0.999), eps=1e-8)
                    if optimizer == "adam" else torch.optim.SGD([self.u], lr=v_lr, momentum=0.9))
        self.move_to(project_vector(sp, sp.hi.copy(), target, self.act))

    def move_to(self, v) -> None:
        self.v = v
        with torch.no_grad():
            self.u.copy_(torch.from_numpy(((v - self.sp.lo) / (self.sp.hi - self.sp.lo))[self.act]))

    def coords(self) -> np.ndarray:
        return self.u.detach().numpy().copy()

    def point(self, ua) -> np.ndarray:
        """The full vector at coordinates ``ua`` (clipped to [0, 1]; inactive entries full)."""
        out = self.sp.hi.copy()
        out[self.act] = self.sp.lo[self.act] + np.clip(ua, 0, 1) * self.span
        return out

    def feasible(self, ua, fill: bool = False) -> np.ndarray:
        return project_vector(self.sp, self.point(ua), self.target, self.act, fill=fill)

    def noise(self, k: int) -> np.ndarray:
        """Per-entry sigma at v-update ``k``: halved linearly over the search, never below one
        unit of the entry (a channel, a block, a resolution step)."""
        a = self.sigma * (1 - 0.5 * k / max(1, self.steps - 1))
        return np.maximum(a, self.sp.unit[self.act] / self.span)

    def step(self, g) -> None:
        self.u.grad = torch.from_numpy(np.asarray(g, float))
        self.opt.step()
        self.move_to(self.feasible(self.coords(), fill=True))


def _held_out_loss(net, sp, calib, xb, yb, cache: dict):
    """``vector → cross-entropy`` of the supernet's sub-network on (xb, yb), its BN statistics
    from ``calib``; memoised per configuration."""
    def loss(v):
        cfg = sp.config(v)
        if cfg not in cache:
            with torch.no_grad():
                out = net(torch.cat([calib, xb]), cfg, k=len(calib))[len(calib):]
                cache[cfg] = F.cross_entropy(out, yb).item()
        return cache[cfg]
    return loss


def _candidate(vec: _Vector, i: int, k: int, warm: int, gen) -> np.ndarray:
    """The structure a supernet step trains: during warm-up the full network every fourth step,
    else a uniform random one; after it, alternately near the current vector and uniform."""
    n = len(vec.span)
    if i < warm:
        return vec.sp.hi.copy() if i % 4 == 0 else \
            vec.point(torch.rand(n, generator=gen, dtype=torch.float64).numpy())
    e = torch.randn(n, generator=gen, dtype=torch.float64).numpy()  # drawn on every step
    ua = vec.coords() + vec.noise(k) * e if i % 2 == 0 else \
        torch.rand(n, generator=gen, dtype=torch.float64).numpy()
    return vec.feasible(ua)


def _rescore(net, sp, calib, rows, visited, xv, yv, val_batch) -> None:
    """Every visited vector's held-out loss with the final supernet, into ``rows[...]["val_loss"]``."""
    net.eval()
    scores = {}
    with torch.no_grad():
        for row, vec in zip(rows, visited):
            if (cfg := sp.config(vec)) not in scores:
                scores[cfg] = sum(F.cross_entropy(net(torch.cat([calib, xb]), cfg,
                                                      k=len(calib))[len(calib):], yb,
                                                  reduction="sum").item()
                                  for xb, yb in zip(xv.split(val_batch), yv.split(val_batch)))
            row["val_loss"] = scores[cfg] / len(xv)


TRACE = ["iteration", "step", "loss", "flops", "flops_ratio", "width", "depth", "resolution",
         "sigma", "train_loss", "val_loss"]


def search(model: nn.Module, train_loader, flops_target: float = 0.5, dims=DIMS,
           supernet_steps: int = 300, search_steps: int = 40, samples: int = 8, seed: int = 0, *,
           val_data=None, image_size: int | None = None, val_size: int = 500,
           val_batch: int = 64, calib_size: int = 32, lr: float = 2e-3, v_lr: float = 0.05,
           sigma: float = 0.1, warmup: float = 0.3, optimizer: str = "adam", dev="auto",
           progress: bool = True, return_supernet: bool = False):
    """JointPruning search. Returns ``(vector, trace)``, or ``(vector, trace, supernet)``.
    ``vector`` is rounded (see :func:`decode`), its FLOPs lie within 1 % under ``flops_target`` x
    full, and it is the v-update with the lowest ``val_loss`` (module doc; the start vector when
    ``search_steps`` is 0). ``trace`` has one row per v-update: iteration, step, loss (mean of
    the 2N held-out losses), flops, flops_ratio, width (mean channel ratio), depth (total
    blocks), resolution, sigma, train_loss, val_loss (the updated vector's held-out loss with
    the final supernet) and best (True on the returned row). ``model``: the dense CIFAR-style
    ResNet or zoo MobileNet the supernet starts from (trained, or fresh for a supernet from scratch);
    ``train_loader``: training batches (an in-memory :class:`rdprune.data.TensorLoader`, whose
    held-out part is split off here, or any loader with ``val_data=(x, y)``). The supernet
    trains ``supernet_steps`` steps (AdamW at ``lr``, cosine), the first ``warmup`` of them on
    random structures; ``search_steps`` v-updates (``optimizer`` "adam" or "momentum" at
    ``v_lr``, gradients from ``samples`` antithetic pairs at noise ``sigma``) are spread over
    the rest."""
    sp = space_of(model, image_size)
    dims, target = dims_of(dims), target_macs(sp, flops_target)
    if optimizer not in ("adam", "momentum"):
        raise ValueError(f"optimizer must be 'adam' or 'momentum', not {optimizer!r}")
    if min(supernet_steps, search_steps) < 0 or samples < 1 or not 0 <= warmup <= 1:
        raise ValueError("need supernet_steps, search_steps >= 0, samples >= 1, warmup in [0, 1]")
    dev = device(dev)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loader, (xv, yv), calib = _split(train_loader, val_data, val_size, calib_size, gen)
    net = Supernet(model, sp.full).to(dev)
    net.calib, calib = calib, calib.to(dev)
    vec = _Vector(sp, dims, target, optimizer, v_lr, sigma, search_steps)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, supernet_steps))
    warm = int(round(warmup * supernet_steps))
    due = [warm + (k + 1) * (supernet_steps - warm) // max(1, search_steps)
           for k in range(search_steps)]
    batches, vi, rows, visited, k, train_loss = _cycle(loader), 0, [], [], 0, None
    bar = tqdm(total=supernet_steps + search_steps, desc=f"jointpruning {sp.model_name}",
               disable=not progress, leave=False)
    for i in range(supernet_steps + 1):
        while k < len(due) and due[k] <= i:  # ---- one v-update (self-adapted gradient step)
            net.eval()
            sig = vec.noise(k)
            xb, yb = xv[vi:vi + val_batch].to(dev), yv[vi:vi + val_batch].to(dev)
            vi = vi + val_batch if vi + 2 * val_batch <= len(xv) else 0
            loss = _held_out_loss(net, sp, calib, xb, yb, {})
            g, losses = estimate_gradient(lambda ua: loss(vec.feasible(ua)), vec.coords(), sig,
                                          samples, gen, vec.groups)
            vec.step(g)
            cfg = sp.config(vec.v)
            visited.append(sp.snap(vec.v))
            rows.append(dict(iteration=k + 1, step=i, loss=float(losses.mean()),
                             flops=sp.macs(cfg), flops_ratio=sp.macs(cfg) / sp.full_macs,
                             width=float(visited[-1][:sp.nc].mean()), depth=sum(cfg.depths),
                             resolution=cfg.resolution, sigma=float(sig.mean()),
                             train_loss=np.nan if train_loss is None else train_loss))
            k += 1
            bar.update()
            bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}", refresh=False)
        if i == supernet_steps:
            break
        net.train()  # ---- one supernet step on a sampled structure
        xb, yb = next(batches)
        loss = F.cross_entropy(net(xb.to(dev), sp.config(_candidate(vec, i, k, warm, gen))),
                               yb.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        train_loss = loss.item() if train_loss is None else 0.9 * train_loss + 0.1 * loss.item()
        bar.update()
    bar.close()
    _rescore(net, sp, calib, rows, visited, xv.to(dev), yv.to(dev), val_batch)
    pick = int(np.argmin([r["val_loss"] for r in rows])) if rows else None
    trace = pd.DataFrame(rows, columns=TRACE)
    trace["best"] = trace.index == pick
    vector = visited[pick] if rows else sp.snap(vec.v)
    return (vector, trace, net) if return_supernet else (vector, trace)
