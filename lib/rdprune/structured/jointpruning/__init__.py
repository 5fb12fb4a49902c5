"""JointPruning (Liu et al., IEEE TIP 2021, arXiv 2005.08931): channel, depth and resolution
pruned together by a gradient search over one pruning vector, reconstructed for the CIFAR-style
ResNets (resnet20/32/56 of the zoo, or any network of that shape) and the zoo's MobileNet V1 / V2
(:mod:`.mobilenet`: its layout and choices). Method notes: ``docs/jointpruning.md``.
Tags: [P] paper abstract/introduction, [MP] MetaPruning's code, [NC] our choice.

    v, trace = search(dense, train_loader, flops_target=0.5)  # keep 50 % of the FLOPs
    model = build(dense, v)                                    # train it from scratch (rp.train.fit)
    net, record = rp.prune(dense, "jointpruning", 0.5, "flops", train_loader=train_loader)

``flops_target`` here is the fraction of FLOPs *kept* (the paper's constraint); ``rp.prune``'s
``target`` is, as everywhere in rdprune, the fraction removed (``flops_target = 1 - target``).

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
  :func:`inherit` copies the supernet's slices.

The space, FLOPs and projection live in :mod:`.space` (families register a reader there), the
networks in :mod:`.supernet` and :mod:`.mobilenet`, the estimator and the search in :mod:`.search`.
"""
from .mobilenet import MobileConfig, MobileNetSpace, PrunedMobileNet
from .search import estimate_gradient, search
from .space import (
    DIMS,
    MODELS,
    RATIO_MIN,
    Config,
    ResNetSpace,
    Space,
    decode,
    flops,
    project,
    register_family,
    space,
    space_of,
    uniform,
    uniform_for_flops,
)
from .supernet import PrunedResNet, Supernet, build, inherit

__all__ = ["DIMS", "MODELS", "RATIO_MIN", "Config", "MobileConfig", "MobileNetSpace",
           "PrunedMobileNet", "PrunedResNet", "ResNetSpace", "Space", "Supernet", "build",
           "decode", "estimate_gradient", "flops", "inherit", "project", "register_family",
           "search", "space", "space_of", "uniform", "uniform_for_flops"]
