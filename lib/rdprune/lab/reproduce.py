"""``python -m rdprune reproduce``: execute every notebook in ``notebooks/`` with papermill.

Each notebook runs with the parameters of a preset: its own ``parameters`` cell (the ``quick``
preset) with what the preset changes (:data:`rdprune.lab.presets.NOTEBOOKS`), into
``results/<preset>/<notebook>/``: the executed notebook, its CSVs and its figures (PNG + SVG).
A notebook whose dataset is not available (its ``dataset`` parameter; e.g. CIFAR-10 offline) is
skipped with the reason, a failing notebook does not stop the others, and the command exits
non-zero naming the failures. A preset may leave a notebook out (``_skip``: the reason, e.g. the
``full`` preset's 04-06), which is then reported as skipped unless ``--only`` names it; a
notebook whose optional packages are missing (:data:`rdprune.lab.presets.NEEDS`) is skipped
with the install command. Parameters can be overridden: ``-p KEY VALUE`` for every notebook
that declares KEY, ``-p NOTEBOOK:KEY VALUE`` for one (values are read as Python/JSON literals,
else kept as strings).
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

from ..util import REPO, data_dir
from .presets import NEEDS
from .presets import NOTEBOOKS as PRESETS

NOTEBOOKS = REPO / "notebooks"
# the kernel's own log (its "running over TCP without encryption" warning, once per notebook) is
# not the notebook's output; errors still show
QUIET_KERNEL = ["--IPKernelApp.log_level=ERROR"]

def repo_file(*parts) -> Path:
    return REPO.joinpath(*parts)


SETTING = ["paper", "dataset", "model", "method", "schedule", "source"]  # one reported setting


def paper_numbers(paper: str | tuple[str, ...] | None = None, *, wide: bool = False) -> pd.DataFrame:
    """The papers' reported numbers (``data/paper_numbers.csv``), never our measurements.
    ``paper``: keep the papers whose name starts with it (a prefix or a tuple of prefixes).
    Long form (columns paper, dataset, model, method, schedule, metric, value, source), or with
    ``wide`` one row per setting (:data:`SETTING`) and one column per metric (NaN where the
    paper does not report it)."""
    for path in (repo_file("data", "paper_numbers.csv"), data_dir() / "paper_numbers.csv"):
        if path.is_file():
            df = pd.read_csv(path, keep_default_na=False, dtype={"value": float})
            break
    else:
        raise FileNotFoundError("data/paper_numbers.csv is missing from the repository checkout")
    if paper is not None:
        df = df[df["paper"].str.startswith(paper)]
    if wide:
        df = df.pivot_table(index=SETTING, columns="metric", values="value",
                            aggfunc="first").reset_index()
        df.columns.name = None
    return df


def notebooks(folder: str | Path | None = None) -> list[Path]:
    folder = Path(folder) if folder else NOTEBOOKS
    found = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if not found:
        raise FileNotFoundError(f"no notebooks in {folder}")
    return found


def declared(path: Path) -> dict:
    """The notebook's ``parameters`` cell: {name: default}."""
    import papermill as pm
    out = {}
    for name, p in pm.inspect_notebook(str(path)).items():
        try:
            out[name] = ast.literal_eval(p["default"])
        except (ValueError, SyntaxError):
            out[name] = p["default"]
    return out


def parameters(stem: str, preset: str, overrides: dict | None = None,
               folder: str | Path | None = None) -> dict:
    """One notebook's parameters under a preset: its ``parameters`` cell (in ``folder``, default
    the repository's notebooks), what the preset changes, then ``overrides`` ({"*": {...},
    stem: {...}}). Keys starting with ``_`` (``_skip``) are the preset's instructions, and
    ``"*"`` keys a notebook does not declare are kept: :func:`run` passes only declared ones."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    path = Path(folder or NOTEBOOKS) / f"{stem}.ipynb"
    out = {**(declared(path) if path.is_file() else {}), "preset": preset}
    for layer in (PRESETS[preset], overrides or {}):
        out.update(layer.get("*", {}))
        out.update(layer.get(stem, {}))
    return out


def missing(packages) -> str | None:
    """Why a notebook cannot run: the optional packages it needs (:data:`NEEDS`) that are not
    installed, or None."""
    import importlib.util
    absent = [p for p in packages if importlib.util.find_spec(p) is None]
    if not absent:
        return None
    extra = {"transformers": "hf", "timm": "timm"}
    return (f"needs {', '.join(absent)}: pip install " +
            " ".join(f"'rdprune[{extra.get(p, p)}]'" if p in extra else p for p in absent))


def dataset_problem(name: str, params: dict | None = None) -> str | None:
    """Why ``name`` cannot be used offline right now, or None when it can."""
    from . import data as D
    if name in (None, "synthetic"):
        return None
    if name == "pystdlib":
        from . import text
        return None if text.root().is_dir() else f"no Python standard library at {text.root()}"
    if name == "fashion_mnist":
        if D.local_fashion_mnist() is not None:
            return None
        return (f"Fashion-MNIST not found in {D.data_dir() / 'fashion_mnist'} or "
                f"{D.DEBIAN_FMNIST} (apt-get install dataset-fashion-mnist)")
    if name == "cifar10":
        folder = D.data_dir() / "cifar-10-batches-py"
        files = ["test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]
        if all((folder / f).is_file() for f in files):
            return None
        return ("CIFAR-10 not present offline (put torchvision's cifar-10-batches-py in "
                f"{D.data_dir()})")
    if name == "imagenet":
        root = (params or {}).get("imagenet_root")
        if root and (Path(root) / "train").is_dir() and (Path(root) / "val").is_dir():
            return None
        return "ImageNet needs the parameter imagenet_root=<folder with train/ and val/>"
    return f"unknown dataset {name!r}"


def _select(paths: list[Path], only) -> list[Path]:
    if not only:
        return paths
    chosen = [p for p in paths if any(p.stem == o or p.stem.startswith(o) or o in p.stem
                                      for o in only)]
    if not chosen:
        raise ValueError(f"--only {' '.join(only)} matches no notebook; choose from "
                         + ", ".join(p.stem for p in paths))
    return chosen


def run(preset: str = "quick", only: list[str] | None = None, overrides: dict | None = None,
        results: str | Path | None = None, folder: str | Path | None = None,
        progress: bool = True, cell_progress: bool = False,
        cell_timeout: float | None = None, jobs: int = 1) -> pd.DataFrame:
    """Execute the selected notebooks; returns the summary (notebook, status, seconds, output,
    reason) and writes it to ``results/<preset>/summary.csv``. ``cell_timeout`` (seconds, default
    none): a cell that runs longer (or whose reply never comes back from the kernel) fails its
    notebook instead of waiting for ever. ``jobs`` > 1 runs that many notebooks at once, each
    kernel with ``cores // jobs`` threads (``OMP_NUM_THREADS``), which pays where much of a
    notebook is single-threaded (kernel start, small models, figures); notebooks that need the
    same untrained checkpoint then train it side by side, so run one of them first."""
    from tqdm.auto import tqdm
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be a whole number >= 1, got {jobs!r}")
    paths = _select(notebooks(folder), only)
    decl = {p: declared(p) for p in paths}
    unknown = {k for layer in (overrides or {}).values() for k in layer} - \
        {k for d in decl.values() for k in d}
    if unknown:
        raise ValueError(f"parameters {sorted(unknown)} are declared by none of the notebooks "
                         f"{[p.stem for p in paths]}")
    root = Path(results) if results else Path.cwd() / "results"
    root = (root / preset).resolve()
    rows, todo = {}, []
    for path in paths:
        out = root / path.stem
        every = parameters(path.stem, preset, overrides, path.parent)
        params = {k: v for k, v in every.items() if k in decl[path]}
        params["out_dir"] = str(out)
        for quiet in ("interactive", "progress"):  # a batch run: no widgets, no progress bars
            if quiet in decl[path]:
                params.setdefault(quiet, False)
        rows[path] = dict(notebook=path.stem, status="ok", seconds=0.0, output=str(out),
                          reason="")
        problem = ((None if only else every.get("_skip"))  # unless --only asked for it
                   or missing(NEEDS.get(path.stem, ()))
                   or dataset_problem(params.get("dataset", decl[path].get("dataset")),
                                      {**decl[path], **params}))
        if problem:
            rows[path].update(status="skipped", reason=problem)
        else:
            todo.append((path, out, params))
    threads = None if jobs == 1 else max(1, (os.cpu_count() or 1) // jobs)
    bar = tqdm(total=len(paths), desc=f"reproduce {preset}", unit="notebook",
               disable=not progress)

    def report(path):
        row = rows[path]
        bar.update()
        if progress:
            why = f" — {row['reason']}" if row["reason"] else ""
            tqdm.write(f"{path.stem}: {row['status']} ({row['seconds']:.0f} s){why}")

    for path in paths:
        if rows[path]["status"] == "skipped":
            report(path)
    args = [(str(p), str(o), prm, cell_progress, cell_timeout, threads) for p, o, prm in todo]
    if jobs == 1:
        for (path, _, _), a in zip(todo, args):
            bar.set_postfix_str(path.stem)
            rows[path].update(_execute(*a))
            report(path)
    else:
        import concurrent.futures as cf
        import multiprocessing as mp
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_execute, *a): path for (path, _, _), a in zip(todo, args)}
            for f in cf.as_completed(futures):
                rows[futures[f]].update(f.result())
                report(futures[f])
    bar.close()
    summary = pd.DataFrame([rows[p] for p in paths],
                           columns=["notebook", "status", "seconds", "output", "reason"])
    root.mkdir(parents=True, exist_ok=True)
    summary.to_csv(root / "summary.csv", index=False)
    return summary


def _execute(path: str, out: str, params: dict, cell_progress: bool, cell_timeout,
             threads: int | None) -> dict:
    """One notebook through papermill (in this process, or a worker of ``run(jobs=...)``):
    {status, reason, seconds}; a failure is reported, never raised."""
    import papermill as pm

    from .kernel import PatientKernelManager
    if threads is not None:  # the kernel inherits it: jobs × threads ≤ cores
        os.environ["OMP_NUM_THREADS"] = str(threads)
    Path(out).mkdir(parents=True, exist_ok=True)
    tic, result = time.perf_counter(), dict(status="ok", reason="")
    try:
        pm.execute_notebook(path, str(Path(out) / Path(path).name), parameters=params,
                            kernel_name="python3", progress_bar=cell_progress, cwd=str(REPO),
                            log_output=False, execution_timeout=cell_timeout,
                            extra_arguments=QUIET_KERNEL,
                            kernel_manager_class=PatientKernelManager)
    except Exception as e:  # any failure is reported, the rest go on
        msg = f"{getattr(e, 'ename', type(e).__name__)}: {getattr(e, 'evalue', e)}"
        result.update(status="failed", reason=msg.strip().splitlines()[0][:300])
    result["seconds"] = round(time.perf_counter() - tic, 1)
    return result


def parse_value(text: str):
    """``-p`` values: JSON or Python literals (0.9, [0.5, 0.9], true, None), else the string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return text


def parse_overrides(pairs) -> dict:
    out: dict[str, dict] = {}
    for key, value in pairs or []:
        stem, _, name = key.rpartition(":")
        out.setdefault(stem or "*", {})[name] = parse_value(value)
    return out


def _cli(args) -> int:
    if args.list:
        for p in _select(notebooks(args.notebooks), args.only):
            decl = declared(p)
            params = parameters(p.stem, args.preset, parse_overrides(args.param), p.parent)
            print(f"{p.stem}: " + ", ".join(f"{k}={v!r}" for k, v in params.items() if k in decl))
        return 0
    tic = time.perf_counter()
    summary = run(args.preset, args.only, parse_overrides(args.param), args.results,
                  args.notebooks, progress=not args.quiet, cell_progress=args.verbose,
                  cell_timeout=args.cell_timeout, jobs=args.jobs)
    with pd.option_context("display.width", 200, "display.max_colwidth", 90):
        print(summary.to_string(index=False))
    print(f"total {time.perf_counter() - tic:.0f} s; summary in "
          f"{Path(summary['output'].iloc[0]).parent / 'summary.csv'}")
    failed = summary.loc[summary["status"] == "failed", "notebook"].tolist()
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="execute every notebook into results/<preset>/",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="quick", choices=list(PRESETS),
                   help="notebook parameters (rdprune.lab.presets.NOTEBOOKS; default: quick)")
    p.add_argument("--only", action="append", metavar="NAME",
                   help="run only notebooks whose name is or contains NAME (repeatable)")
    p.add_argument("-p", "--param", nargs=2, action="append", metavar=("KEY", "VALUE"),
                   help="override a parameter (KEY or NOTEBOOK:KEY; repeatable)")
    p.add_argument("--results", default=None, help="results root (default ./results)")
    p.add_argument("--notebooks", default=None, help=f"notebook folder (default {NOTEBOOKS})")
    p.add_argument("--list", action="store_true", help="print each notebook's parameters and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="papermill's per-cell progress bars")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="notebooks run at once, each with cores/N threads (default: 1)")
    p.add_argument("--cell-timeout", type=float, default=None, metavar="SECONDS",
                   help="fail a notebook whose cell runs longer than this (default: no limit)")
    p.set_defaults(func=_cli)

