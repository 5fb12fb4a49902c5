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
    held-out part is split off here, or any loader with ``val_data=(x, y)``)."""
    sp = space_of(model, image_size)
    model_name = sp.model_name
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
    act = sp.active(dims)
    groups = [np.flatnonzero(sp.active([d])[act]) for d in dims]
    rng = (sp.hi - sp.lo)[act]
    v = project_vector(sp, sp.hi.copy(), target, act)
    u = ((v - sp.lo) / (sp.hi - sp.lo))[act]
    m1, m2 = np.zeros_like(u), np.zeros_like(u)

    def to_v(ua):
        out = sp.hi.copy()
        out[act] = sp.lo[act] + np.clip(ua, 0, 1) * rng
        return out

    def noise_scale(k):
        a = sigma * (1 - 0.5 * k / max(1, search_steps - 1))
        return np.maximum(a, sp.unit[act] / rng)

    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, supernet_steps))
    warm = int(round(warmup * supernet_steps))
    due = [warm + (k + 1) * (supernet_steps - warm) // max(1, search_steps)
           for k in range(search_steps)]
    batches, vi, rows, ema, k, visited = _cycle(loader), 0, [], float("nan"), 0, []
    bar = tqdm(total=supernet_steps + search_steps, desc=f"jointpruning {model_name}",
               disable=not progress, leave=False)
    for i in range(supernet_steps + 1):
        while k < len(due) and due[k] <= i:  # ---- one v-update (self-adapted gradient step)
            net.eval()
            sig = noise_scale(k)
            xb, yb = xv[vi:vi + val_batch].to(dev), yv[vi:vi + val_batch].to(dev)
            vi = vi + val_batch if vi + 2 * val_batch <= len(xv) else 0
            batch, cache = torch.cat([calib, xb]), {}

            def loss_fn(ua):
                cfg = sp.config(project_vector(sp, to_v(ua), target, act, fill=False))
                if cfg not in cache:
                    with torch.no_grad():
                        out = net(batch, cfg, k=len(calib))[len(calib):]
                        cache[cfg] = F.cross_entropy(out, yb).item()
                return cache[cfg]

            g, losses = estimate_gradient(loss_fn, u, sig, samples, gen, groups)
            if optimizer == "adam":
                m1, m2 = 0.9 * m1 + 0.1 * g, 0.999 * m2 + 0.001 * g * g
                step = (m1 / (1 - 0.9 ** (k + 1))) / (np.sqrt(m2 / (1 - 0.999 ** (k + 1))) + 1e-8)
            else:
                m1 = 0.9 * m1 + g
                step = m1
            v = project_vector(sp, to_v(np.clip(u - v_lr * step, 0, 1)), target, act)
            u = ((v - sp.lo) / (sp.hi - sp.lo))[act]
            cfg = sp.config(v)
            visited.append(sp.snap(v))
            rows.append(dict(iteration=k + 1, step=i, loss=float(losses.mean()),
                             flops=sp.macs(cfg), flops_ratio=sp.macs(cfg) / sp.full_macs,
                             width=float(sp.snap(v)[:sp.nc].mean()), depth=sum(cfg.depths),
                             resolution=cfg.resolution, sigma=float(sig.mean()), train_loss=ema))
            k += 1
            bar.update()
            bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}", refresh=False)
        if i == supernet_steps:
            break
        net.train()  # ---- one supernet step on a sampled structure
        if i < warm:
            cand = sp.hi.copy() if i % 4 == 0 else to_v(torch.rand(len(u), generator=gen,
                                                                   dtype=torch.float64).numpy())
        else:
            e = torch.randn(len(u), generator=gen, dtype=torch.float64).numpy()
            ua = u + noise_scale(k) * e if i % 2 == 0 else \
                torch.rand(len(u), generator=gen, dtype=torch.float64).numpy()
            cand = project_vector(sp, to_v(ua), target, act, fill=False)
        xb, yb = next(batches)
        loss = F.cross_entropy(net(xb.to(dev), sp.config(cand)), yb.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema != ema else 0.9 * ema + 0.1 * loss.item()
        bar.update()
    bar.close()
    net.eval()
    scores, xv, yv = {}, xv.to(dev), yv.to(dev)  # ---- visited vectors re-scored, final supernet
    with torch.no_grad():
        for row, vec in zip(rows, visited):
            if (cfg := sp.config(vec)) not in scores:
                scores[cfg] = sum(F.cross_entropy(net(torch.cat([calib, xb]), cfg,
                                                      k=len(calib))[len(calib):], yb,
                                                  reduction="sum").item()
                                  for xb, yb in zip(xv.split(val_batch), yv.split(val_batch)))
            row["val_loss"] = scores[cfg] / len(xv)
    pick = int(np.argmin([r["val_loss"] for r in rows])) if rows else None
    trace = pd.DataFrame(rows, columns=["iteration", "step", "loss", "flops", "flops_ratio", "width",
                                        "depth", "resolution", "sigma", "train_loss", "val_loss"])
    trace["best"] = trace.index == pick
    vector = visited[pick] if rows else sp.snap(v)
    return (vector, trace, net) if return_supernet else (vector, trace)
