"""JointPruning (Liu et al., IEEE TIP 2021, arXiv 2005.08931): channel, depth and resolution
pruned together by a gradient search over one pruning vector, reconstructed for the CIFAR-style
ResNets of :mod:`rdprune.models` (resnet20/32/56). Method notes: /work/shared/jointpruning.md.
Tags: [P] paper abstract/introduction, [MP] MetaPruning's code, [NC] our choice.

    v, trace = search("resnet20", flops_target=0.5)          # trace: one row per v-update
    model = build("resnet20", v)                               # train it from scratch (rp.train.fit)

* **Search space [P: three dims; layout NC].** ``v = (w_1..w_S, m_{1,1}..m_{S,n}, d_1..d_S, r)``:
  one output-width ratio per stage (the stem shares stage 1's width, which its identity
  shortcuts need) [MP per stage], one inner-width ratio per block, blocks per stage, input side.
  Ratios lie in [0.1, 1], ``c = max(1, round(ratio*C_max))``; continuous, not MetaPruning's 0.03
  grid [MP], because v moves by gradient steps. ``d_s`` in 1..n: blocks 1..d_s run, the first
  (stride/width-changing) one always [NC]. ``r`` snaps to multiples of 4 in [16, full] for inputs
  of at most 64 px (28/32-px images would have only two sizes on the note's grid of 8; inputs
  larger than 64 px use 8 in [96, full]) [NC].
* **Network from v [NC].** Leading-channel slices of the max-width network [MP slicing], skipped
  blocks, and an antialiased bilinear resize of the batch to r x r before the stem; global average
  pooling keeps the classifier's size. :func:`build` makes a physically small network with the
  same module names as the dense model (the resize is inside its forward).
* **Weight sharing [NC, note option b].** A slimmable supernet with plain shared weights, i.e. the
  ``rdprune.models`` network at full width (``init_model=`` may load a trained one). BN keeps no
  running statistics: supernet training uses batch statistics, and each scored candidate
  re-estimates every BN layer's statistics on a fixed calibration batch of ``calib_size``
  training images, in the same forward pass as the scored batch (the same as recalibrating and
  then evaluating). So no per-width BN layers are needed. MetaPruning re-estimates on 100
  batches [MP]; one batch is our CPU-cost choice.
* **Training [P: one end-to-end run; schedule NC].** AdamW (lr 2e-3, weight decay 0.01, cosine),
  the house optimiser. The first ``warmup`` (30 %) of the supernet steps train uniform random
  structures with the max network every 4th step (the sandwich rule). After that, steps alternate
  between a structure around v (perturbed as in the estimator) and a uniform random structure,
  both projected onto the FLOPs target, and ``search_steps`` v-updates are spread evenly between
  them. v is scored on a held-out split of ``val_size`` training images (MetaPruning: 50 per
  class [MP]); the test set is never touched.
* **Self-adapted stochastic gradient [P: name/purpose; formula NC].** The estimator works in
  normalised units ``u = (v-lo)/(hi-lo)`` in [0, 1]. It is antithetic Gaussian smoothing,
  ``g = 1/(2N) sum_i [L(u+s*e_i) - L(u-s*e_i)] e_i/s``, with ``e_i ~ N(0, I)``, N = ``samples``,
  and all 2N losses on the same held-out minibatch and calibration batch. Each perturbed vector
  is projected onto the FLOPs target before scoring, so g estimates the gradient of L∘P: the
  value of reallocating FLOPs between dimensions. "Self-adapted": per dimension,
  ``s_j = max(a_t, unit_j/range_j)``, where a_t decays linearly from ``sigma`` to ``sigma/2`` and
  the floor keeps every perturbation at least one rounding step (1 channel, 1 block, 4 px). g is
  divided by its RMS within each group (channel / depth / resolution) and then applied by Adam
  (``v_lr`` 0.05 in u units) or SGD-momentum 0.9; u is clipped to [0, 1].
* **FLOPs projection [NC, note option b], after every v step.** Every active dimension moves along
  one path, lo -> v for t in [0, 1] and v -> hi for t in [1, 2]. Bisection (40 halvings) finds the
  largest t with ``FLOPs(round(v_t)) <= target``. Rounding makes FLOPs jump (a block or 4 px at a
  time), so the projection then adds single channels greedily, the largest increase that still
  fits first, until FLOPs is within 1 % under the target. If the channels are already full,
  it trades one block or resolution step up for a channel-only re-projection. Dimensions left
  out of ``dims`` stay at full size.
* **FLOPs.** These are the multiply-adds of the convs and the classifier, i.e.
  ``FlopCounterMode``/2. Resize, BN, ReLU, pooling and additions are not counted, as everywhere in
  rdprune.
* **Output [MP retrains; selection NC].** Not the last vector (the ES walk can drift back, e.g.
  once the channel entries sit at the 1.0 cap) but the v-update with the lowest held-out loss:
  after the search every distinct vector of the trace is re-scored with the *final* supernet on
  all ``val_size`` held-out images (same BN calibration batch), so all compete with the same
  weights; ties go to the earlier update. :func:`build` is then trained from scratch, or
  :func:`inherit` copies the supernet's slices. MobileNetV2 is not supported.

The space, FLOPs and networks live in :mod:`rdprune.supernet`; this module holds the projection,
the estimator, the search and the user-facing helpers.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import data as D
from . import train as T
from .supernet import MODELS, RATIO_MIN, Config, PrunedResNet, Space, Supernet, space

__all__ = ["DIMS", "MODELS", "Config", "PrunedResNet", "Space", "Supernet", "build", "decode",
           "estimate_gradient", "flops", "inherit", "project", "search", "space", "uniform",
           "uniform_for_flops"]
DIMS = ("channel", "depth", "resolution")
_TOL = 0.01  # the projection lands in [0.99, 1] x target


def _dims(dims) -> tuple:
    dims = (dims,) if isinstance(dims, str) else tuple(dims)
    bad = [d for d in dims if d not in DIMS]
    if bad or not dims:
        raise ValueError(f"dims must be a non-empty subset of {DIMS}; got {dims!r}")
    return dims


def _target(sp: Space, flops_target: float) -> float:
    if not 0.0 < float(flops_target) <= 1.0:
        raise ValueError(f"flops_target is a fraction of the full model's FLOPs in (0, 1]; "
                         f"got {flops_target}")
    return float(flops_target) * sp.full_macs


# ----------------------------------------------------------------------------- public helpers
def decode(model_name: str, vector, **shape) -> Config:
    """The integer network (channels, depths, resolution) that ``vector`` maps to."""
    sp = space(model_name, **shape)
    return sp.config(sp.check(vector))


def flops(model_name: str, vector, num_classes: int = 10, in_channels: int = 1,
          image_size: int | None = None) -> int:
    """Analytic multiply-adds (convs + classifier) of the subnetwork ``vector`` for one image."""
    sp = space(model_name, num_classes, in_channels, image_size)
    return sp.macs(sp.config(sp.check(vector)))


def uniform(model_name: str, width: float, **shape) -> np.ndarray:
    """The uniform width-multiplier baseline: every ratio ``width``, full depth and resolution."""
    sp = space(model_name, **shape)
    if not RATIO_MIN <= width <= 1.0:
        raise ValueError(f"width must be in [{RATIO_MIN}, 1]; got {width}")
    return np.r_[np.full(sp.nc, float(width)), sp.hi[sp.nc:]]


def uniform_for_flops(model_name: str, flops_target: float, **shape) -> np.ndarray:
    """The widest uniform baseline with FLOPs <= ``flops_target`` x full (no greedy fill, so it
    may sit a few percent under the target)."""
    sp = space(model_name, **shape)
    target = _target(sp, flops_target)
    lo, hi = RATIO_MIN, 1.0
    if sp.macs(sp.config(uniform(model_name, lo, **shape))) > target:
        raise ValueError(f"flops_target {flops_target} is below the narrowest uniform network")
    for _ in range(40):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if sp.macs(sp.config(uniform(model_name, mid, **shape))) <= target \
            else (lo, mid)
    return sp.snap(uniform(model_name, lo, **shape))


def project(model_name: str, vector, flops_target: float, dims=DIMS, **shape) -> np.ndarray:
    """Scale ``vector``'s active dimensions by one factor (bisection), then add single channels,
    so that the rounded network's FLOPs lie in [0.99, 1] x ``flops_target`` x full FLOPs."""
    sp = space(model_name, **shape)
    active = sp.active(_dims(dims))
    v = np.where(active, sp.check(vector), sp.hi)  # dimensions not searched stay at full size
    return _project(sp, v, _target(sp, flops_target), active)


def _bump(sp: Space, x, j):
    """``x`` with entry ``j`` raised by one rounding step (None at the top of its range)."""
    x, c = x.copy(), sp.config(x)
    if j < sp.nc:
        n = np.rint(x[j] * sp.cmax[j])
        x[j] = (n + 1) / sp.cmax[j] if n < sp.cmax[j] else np.nan
    elif j < sp.size - 1:
        x[j] = np.rint(x[j]) + 1 if np.rint(x[j]) < sp.n else np.nan
    else:
        up = sp.res_grid[sp.res_grid > c.resolution]
        x[j] = up[0] if len(up) else np.nan
    return None if np.isnan(x[j]) else x


def _project(sp: Space, v, target, active, fill=True) -> np.ndarray:
    """Bisection along lo -> v -> hi over the active entries (the others stay as they are), then
    greedy single-channel fill; if that stalls, trade a coarse step (block / resolution) up for
    a channel-only re-projection."""
    v = np.clip(v, sp.lo, sp.hi)
    lo, hi = np.where(active, sp.lo, v), np.where(active, sp.hi, v)

    def path(t):
        return lo + t * (v - lo) if t <= 1 else v + (t - 1) * (hi - v)

    def cost(x):
        return sp.macs(sp.config(x))

    if cost(lo) > target:
        raise ValueError(f"FLOPs target {target / sp.full_macs:.4f} of full is below the smallest "
                         f"network of this space ({cost(lo) / sp.full_macs:.4f})")
    t_ok, t_bad = (2.0, 2.0) if cost(hi) <= target else (0.0, 2.0)
    for _ in range(40 if t_bad > t_ok else 0):
        mid = (t_ok + t_bad) / 2
        t_ok, t_bad = (mid, t_bad) if cost(path(mid)) <= target else (t_ok, mid)
    out = path(t_ok)
    if not fill:
        return out
    chan = active & (np.arange(sp.size) < sp.nc)
    coords = np.flatnonzero(chan if chan.any() else active)
    cur = cost(out)
    while cur < (1 - _TOL) * target:
        cands = [c for c in (_bump(sp, out, j) for j in coords) if c is not None]
        fits = [(cost(c), i) for i, c in enumerate(cands) if cost(c) <= target]
        if not fits:
            break
        cur, i = max(fits)
        out = cands[i]
    if cur < (1 - _TOL) * target and chan.any():
        for j in np.flatnonzero(active & ~chan):
            cand = _bump(sp, out, j)
            if cand is not None and cost(np.where(chan, sp.lo, cand)) <= target:
                alt = _project(sp, cand, target, chan)
                if cur < cost(alt):
                    out, cur = alt, cost(alt)
    return out


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


def build(model_name: str, vector, num_classes: int = 10, in_channels: int = 1,
          image_size: int | None = None) -> PrunedResNet:
    """A freshly initialised pruned network with exactly ``decode(vector)``'s channels/depths."""
    sp = space(model_name, num_classes, in_channels, image_size)
    model = PrunedResNet(sp, sp.config(sp.check(vector)))
    model.vector = sp.snap(sp.check(vector))
    return model


@torch.no_grad()
def inherit(supernet: Supernet, vector, calib: torch.Tensor | None = None) -> PrunedResNet:
    """:func:`build` with the supernet's leading slices copied in; BN running statistics are set
    from ``calib`` (default: the calibration batch the search used), in eval mode."""
    sp = supernet.space
    model = build(sp.model_name, vector, sp.num_classes, sp.in_channels, sp.full)
    calib = supernet.calib if calib is None else calib
    if calib is None:
        raise ValueError("inherit needs calib= (a batch of training inputs) to set BN statistics")
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            src = supernet.net.get_submodule(name)
            idx = tuple(slice(0, n) for n in mod.weight.shape)
            mod.weight.copy_(src.weight[idx])
            if mod.bias is not None:
                mod.bias.copy_(src.bias[idx[:1]])
    stats = {}
    p = next(supernet.parameters())
    supernet(calib.to(p.device), model.config, k=len(calib), record=stats)
    for name, (mean, var) in stats.items():
        bn = model.get_submodule(name)
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    return model.to(p.device).eval()


# ----------------------------------------------------------------------------- search
def _cycle(loader):
    while True:
        yield from loader


def _split(dataset, train_loader, val_data, val_size, calib_size, batch_size, gen):
    """(supernet-training loader, held-out (x, y), calibration batch), all from training data."""
    if train_loader is None or hasattr(train_loader, "x"):
        x, y = (D.tensors(dataset, "train") if train_loader is None
                else (train_loader.x, train_loader.y))
        bs = batch_size if train_loader is None else train_loader.batch_size
        perm = torch.randperm(len(x), generator=gen)
        nv = 0 if val_data is not None else min(val_size, len(x) // 5)
        val = val_data if val_data is not None else (x[perm[:nv]], y[perm[:nv]])
        xt, yt = x[perm[nv:]], y[perm[nv:]]
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=gen))
        loader = D.TensorLoader(xt, yt, bs, True, augment=dataset == "cifar10", seed=seed)
        return loader, val, xt[:calib_size]
    if val_data is None:
        raise ValueError("a train_loader without in-memory tensors (.x/.y) needs val_data=(x, y)")
    return train_loader, val_data, next(iter(train_loader))[0][:calib_size]


def search(model_name: str = "resnet20", dataset: str = "fashion_mnist", flops_target: float = 0.5,
           dims=DIMS, supernet_steps: int = 300, search_steps: int = 40, samples: int = 8,
           seed: int = 0, *, train_loader=None, val_data=None, batch_size: int = 64,
           val_size: int = 500, val_batch: int = 64, calib_size: int = 32, lr: float = 2e-3,
           v_lr: float = 0.05, sigma: float = 0.1, warmup: float = 0.3, optimizer: str = "adam",
           init_model: nn.Module | None = None, dev="auto", progress: bool = True,
           return_supernet: bool = False):
    """JointPruning search. Returns ``(vector, trace)``, or ``(vector, trace, supernet)``.
    ``vector`` is rounded (see :func:`decode`), its FLOPs lie within 1 % under ``flops_target`` x
    full, and it is the v-update with the lowest ``val_loss`` (module doc; the start vector when
    ``search_steps`` is 0). ``trace`` has one row per v-update: iteration, step, loss (mean of
    the 2N held-out losses), flops, flops_ratio, width (mean channel ratio), depth (total
    blocks), resolution, sigma, train_loss, val_loss (the updated vector's held-out loss with
    the final supernet) and best (True on the returned row)."""
    inf = D.info(dataset)
    sp = space(model_name, inf.num_classes, inf.in_channels, inf.image_size)
    dims, target = _dims(dims), _target(sp, flops_target)
    if optimizer not in ("adam", "momentum"):
        raise ValueError(f"optimizer must be 'adam' or 'momentum', not {optimizer!r}")
    if min(supernet_steps, search_steps) < 0 or samples < 1 or not 0 <= warmup <= 1:
        raise ValueError("need supernet_steps, search_steps >= 0, samples >= 1, warmup in [0, 1]")
    dev = T.device(dev)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loader, (xv, yv), calib = _split(dataset, train_loader, val_data, val_size, calib_size,
                                     batch_size, gen)
    net = Supernet(model_name, inf.num_classes, inf.in_channels, inf.image_size, init_model).to(dev)
    net.calib, calib = calib, calib.to(dev)
    act = sp.active(dims)
    groups = [np.flatnonzero(sp.active([d])[act]) for d in dims]
    rng = (sp.hi - sp.lo)[act]
    v = _project(sp, sp.hi.copy(), target, act)
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
                cfg = sp.config(_project(sp, to_v(ua), target, act, fill=False))
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
            v = _project(sp, to_v(np.clip(u - v_lr * step, 0, 1)), target, act)
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
            cand = _project(sp, to_v(ua), target, act, fill=False)
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
