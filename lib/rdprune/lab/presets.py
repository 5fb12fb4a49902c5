"""Every preset, written once: how the zoo is trained (:data:`RECIPES`), how a pruning schedule runs
(:data:`SCHEDULES`), the CLI's comparison defaults (:data:`BASELINES`) and what the notebooks'
presets change (:data:`NOTEBOOKS`). A notebook's own ``parameters`` cell is its ``quick`` preset;
the other presets hold only what they change, so no value is written twice.

What "quick" means, in each place:
- a **recipe** ``quick``: 2 epochs of AdamW (ResNet-20 ≥ 90 % top-1 on Fashion-MNIST; the
  MobileNets 600 steps of 64, about 0.64 epoch, and the transformers their own,
  :data:`_PER_MODEL`); ``smoke`` trains for seconds (tests); ``paper`` is the RD authors' CIFAR
  recipe (AdamW lr 3e-4, batch 100, 50k steps for ResNets and the MobileNets, 20k VGG-16, 80k
  DenseNet);
- a **schedule** ``quick`` (``prune`` and ``baselines``): 256 calibration images, a 51-point grid,
  200 fine-tuning steps per round; ``paper``: the authors' 1024 images, 101 points, worst-case
  distortion and 80k/40k/60k fine-tuning steps;
- the **notebooks'** ``quick`` (their parameters cells): 128 calibration images, a 21-point grid,
  2,000 test images and one seed, sized so that a CPU runs every notebook in one sitting
  (docs/reproducibility.md has the measured times);
- the **notebooks'** ``full``: the RD comparison (01-03) on all 10,000 test images; notebook 03
  over 3 seeds, each from a 10-epoch dense model (recipe ``long``) with 480 fine-tuning steps
  per iterative round, the rate decayed to zero in each (``cosine``); 04-08 are skipped with the
  reason (their seeds lists work; 3 seeds cost hours more on a CPU);
- ``paper_regime``: notebook 03 iterated to 95.5 and 98.85 % sparsity, RD against LAMP, 3 seeds
  from 10-epoch dense models, a 101-point grid and 240 cosine steps per round.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from ..core.criteria import get as get_criterion
from ..util import LR_SCHEDULES, check_choice


# ----------------------------------------------------------------------------- training recipes
@dataclass(frozen=True)
class Recipe:
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 128
    epochs: float = 2.0           # dense training length (epochs, fractional allowed)
    steps: int | None = None      # overrides epochs when set
    schedule: str = "cosine"      # "cosine" | "constant"


RECIPES = {
    "quick": Recipe(),
    "smoke": Recipe(epochs=0.1),  # seconds: for tests and a first look, not for results
    # 5x quick: notebook 03's dense models in the full preset. From a 2-epoch "quick" model the
    # fine-tune kept gaining up to 480 steps per round (docs/results/full/finetune_budget_cosine.csv)
    "long": Recipe(epochs=10.0),
    "paper": Recipe(lr=3e-4, batch_size=100, steps=50_000),
}
# (recipe, model) -> changes: the paper recipe's dense training per architecture; the byte-level
# language model counts steps of 32 windows (an epoch of its corpus is about 2,640 of them);
# the MobileNets' quick recipe is shorter (their CIFAR variants keep 28 px through the first
# stages, so a step of 64 costs about 5 ResNet-20 steps)
_PER_MODEL = {("quick", "mobilenet_v2"): dict(batch_size=64, steps=600),
              ("quick", "mobilenet_v1"): dict(batch_size=64, steps=600),
              ("smoke", "mobilenet_v2"): dict(batch_size=32, steps=10),
              ("smoke", "mobilenet_v1"): dict(batch_size=32, steps=10),
              ("paper", "vgg16"): dict(steps=20_000), ("paper", "densenet121"): dict(steps=80_000),
              ("quick", "lm_tiny"): dict(batch_size=32, steps=850, lr=2e-3),
              ("smoke", "lm_tiny"): dict(batch_size=16, steps=20, lr=2e-3),
              ("smoke", "vit_tiny"): dict(steps=10)}


def get_recipe(name: str | Recipe, model_name: str | None = None) -> Recipe:
    """Look up a named recipe (some have per-architecture changes, :data:`_PER_MODEL`)."""
    if isinstance(name, Recipe):
        return name
    check_choice("recipe", name, RECIPES)
    return replace(RECIPES[name], **_PER_MODEL.get((name, model_name), {}))


# ----------------------------------------------------------------------------- pruning schedules
@dataclass(frozen=True)
class Settings:
    """Every schedule knob; :data:`SCHEDULES` holds the quick CPU and paper defaults."""
    calib_n: int = 256
    grid: int = 51
    distortion: str = "mse"
    per_round: float = 0.2
    visit: tuple[float, ...] = ()  # iterative: sparsities a round lands on (schedule_targets)
    finetune_steps: int = 200
    finetune_lr: float = 3e-4
    finetune_schedule: str = "constant"  # per round: "constant" (the RD authors) or "cosine" (to 0)
    batch_size: int = 128
    eval_subset: int | None = None  # test images used for top-1 (None: all)
    refine: int = 0  # rd only: rd.refine steps after the DP (0: the paper's method)
    criterion: str = "magnitude"  # which weights go inside each layer (rdprune.core.criteria)
    val_n: int = 512  # held-out training images guarding each fine-tune (0: no guard)


SCHEDULES = {
    "quick": Settings(),
    # the RD authors' CIFAR settings (docs/rd-authors-code.md); fine-tune steps per model below
    "paper": Settings(calib_n=1024, grid=101, distortion="worst_case", finetune_steps=80_000,
                      batch_size=100),
}
_PAPER_FINETUNE = {"vgg16": 40_000, "densenet121": 60_000}
# the quick schedule (notebook 03's full preset sets its own recipe, steps and schedule)
SCHEDULES["full"] = SCHEDULES["paper_regime"] = SCHEDULES["quick"]
# the dense model each schedule preset starts from when no recipe is given (notebook 03's full
# preset gives its own, "long")
SCHEDULE_RECIPE = {"quick": "quick", "full": "quick", "paper_regime": "long", "paper": "paper"}


def settings(preset: str = "quick", model_name: str | None = None, **overrides) -> Settings:
    """A schedule preset with ``overrides`` (None values keep the preset's)."""
    check_choice("preset", preset, SCHEDULES)
    s = SCHEDULES[preset]
    if preset == "paper" and model_name in _PAPER_FINETUNE:
        s = replace(s, finetune_steps=_PAPER_FINETUNE[model_name])
    unknown = set(overrides) - set(asdict(s))
    if unknown:
        raise ValueError(f"unknown settings {sorted(unknown)}; known: {sorted(asdict(s))}")
    s = replace(s, **{k: v for k, v in overrides.items() if v is not None})
    check_choice("finetune_schedule", s.finetune_schedule, LR_SCHEDULES)
    get_criterion(s.criterion)
    return s


# ----------------------------------------------------------------------------- CLI comparison
BASELINES = dict(model="resnet20", dataset="fashion_mnist", recipe="quick",
                 methods=["rd", "global", "uniform", "uniform_plus", "erk", "lamp"],
                 targets=[0.5, 0.8, 0.9, 0.95], budget="params",
                 calib_n=SCHEDULES["quick"].calib_n, grid=SCHEDULES["quick"].grid, refine=0)

# ----------------------------------------------------------------------------- notebooks
_WIDTHS = [0.75, 0.5, 0.25]  # the MobileNet width multipliers
_COMPARED_ALL = ["rd", "rd_filter", "HBGS", "HBGS-B", "HBGTS", "HBGTS-B", "jointpruning",
                 "uniform_width", "l1_filter"]

# what a notebook needs beyond the base install (lm_tiny is Hugging Face's GPT-2)
NEEDS = {"07_transformers": ["transformers"], "08_arena": ["transformers"]}

# Preset → {"*": for every notebook that declares the key, "<notebook stem>": its own; later
# wins} on top of each notebook's own ``parameters`` cell, which *is* the quick preset: a value
# is written in one place. ``_skip`` leaves a notebook out of a preset's run (with the reason)
# unless ``--only`` names it.
NOTEBOOKS: dict[str, dict[str, dict]] = {
    # the notebooks' parameters cells: one seed, 128 calibration images, a 21-point grid and
    # 2,000 test images (docs/reproducibility.md has the measured times)
    "quick": {},
    # 3 seeds and all 10,000 test images for the RD paper's comparison (notebooks 01-03). 04-08
    # are skipped with the reason: 04 (3 seeds, ResNet-20 and both MobileNets) with --only 04,
    # 05-06 with -p seeds "[0, 1, 2]".
    "full": {
        "*": dict(eval_subset=None),
        "02_additivity": dict(n_configs=60),
        # 10-epoch dense models and 480 cosine fine-tuning steps per round: from the 2-epoch
        # quick models every budget up to 480 kept gaining (the fine-tune was still training the
        # dense model); from 10 epochs, doubling 240 to 480 (and 480 to 960) moved no round by
        # more than the test-set noise (docs/results/full/finetune_budget_cosine*.csv,
        # docs/results.md "RD against LAMP"); 480 is the doubling past the first budget that met it
        "03_rd_vs_baselines": dict(seeds=[0, 1, 2], recipe="long", finetune_steps=480,
                                   finetune_schedule="cosine"),
        "04_jointpruning": dict(widths=_WIDTHS, model=["resnet20", "mobilenet_v1", "mobilenet_v2"],
                                seeds=[0, 1, 2], supernet_steps=120, retrain_steps=150,
                                _skip="not in the full preset (3 seeds of ResNet-20 and both "
                                "MobileNets take hours on a CPU); run it with: python -m rdprune "
                                "reproduce --preset full --only 04"),
        **{stem: dict(_skip="not in the full preset (3 seeds of notebooks 05-06 take hours on a "
                            "CPU); run it with: python -m rdprune reproduce --preset full --only "
                            + stem[:2] + " -p seeds \"[0, 1, 2]\"")
           for stem in ("05_hbgs", "06_comparison")},
        "07_transformers": dict(_skip="not in the full preset yet (one seed of it is the quick "
                                "preset); run it with: python -m rdprune reproduce --preset full "
                                "--only 07 -p seeds \"[0, 1, 2]\""),
        "08_arena": dict(seeds=[0, 1, 2], targets=[0.5, 0.6, 0.7, 0.8],
                         evo={"generations": 30, "offspring": 16},
                         _skip="not in the full preset's default run (three models, three "
                               "criteria, four targets and three seeds take hours on a CPU); run "
                               "it with: python -m rdprune reproduce --preset full --only 08"),
    },
    # RD where its paper reports it: iterative to 95.5 % and 98.85 % sparsity, RD against LAMP,
    # 3 seeds, from the full preset's 10-epoch dense models. Rounds halve the remaining weights
    # (the authors remove 20 % per round, 20 rounds; these are 7) and land on 95.5 % on the way
    # (visit); a 101-point grid as the authors', since at 98.85 % a layer's amount must be
    # finer than 5 %. Each round fine-tunes 240 cosine steps, the first budget that settled the
    # full preset's rounds up to 90 %; benchmarks/bench_finetune_budget.py --preset paper_regime
    # checks the doubling at these sparsities.
    "paper_regime": {
        "*": dict(recipe="long", grid=101, eval_subset=None),
        "03_rd_vs_baselines": dict(seeds=[0, 1, 2], targets=[0.9, 0.955, 0.98847],
                                   methods=["rd", "lamp", "global", "erk"],
                                   iterative_target=0.98847, visit=[0.955], finetune_steps=240,
                                   finetune_schedule="cosine"),
        **{stem: dict(_skip="the paper-regime preset is notebook 03's iterative RD comparison "
                            "at 95.5 and 98.85 % sparsity")
           for stem in ("01_rd_curves", "02_additivity", "04_jointpruning", "05_hbgs",
                        "06_comparison", "07_transformers", "08_arena")},
    },
    "paper": {  # the RD authors' CIFAR-10 protocol (docs/rd-authors-code.md); needs CIFAR-10, a GPU
        "*": dict(dataset="cifar10", model="resnet32", recipe="paper", calib_n=1024, grid=101,
                  eval_subset=None, distortion="worst_case"),
        "01_rd_curves": dict(targets=[0.9, 0.955, 0.98847]),
        "02_additivity": dict(model=["resnet32", "vgg16"], targets=[0.9, 0.955, 0.98847],
                              n_configs=200, max_amount=0.8),
        "03_rd_vs_baselines": dict(targets=[0.5, 0.8, 0.9, 0.955, 0.98847],
                                   iterative_methods=["rd", "lamp", "global", "erk"],
                                   iterative_target=0.98847, per_round=0.2, finetune_steps=None),
        # JointPruning note's CPU-scale suggestion (supernet ~40 epochs, 300 v-updates, N = 8,
        # retrain ~100 epochs); HBGS slides: k = 5, 1 epoch between rounds, 63 / 95 % params
        "04_jointpruning": dict(widths=_WIDTHS, model=["resnet32", "mobilenet_v1", "mobilenet_v2"],
                                supernet_steps=30_000, search_steps=300, samples=8,
                                retrain_steps=40_000),
        "05_hbgs": dict(targets=[0.63, 0.95], k=5, selection_n=1024, round_finetune_steps=390,
                        finetune_steps=40_000),
        "06_comparison": dict(methods=_COMPARED_ALL, k=5, selection_n=1024,
                              round_finetune_steps=390, supernet_steps=30_000, search_steps=300,
                              samples=8, finetune_steps=40_000, latency_repeats=20),
        "07_transformers": dict(_skip="the RD paper has no transformer protocol to follow; run "
                                      "the quick preset (07 --only) instead"),
        "08_arena": dict(_skip="the arena has no paper protocol to follow; run the quick or full "
                               "preset (--only 08) instead"),
    },
}
