"""Finished runs -> benchmark tables and learning curves.

A *run* is a directory written by ``python -m rltrain`` (``config.yaml``; ``summary.json`` once it
finished; ``eval.csv``). Runs are grouped by everything that differs between their resolved configs
except the seed (and bookkeeping that cannot change a result: ``IGNORED_KEYS``, ``logger.*``):
first by task (the dataset id offline, the env id online) and algorithm, then, within those, by
every other key whose value is not the same in all of their runs (a learning rate, a budget, the
tuned preset), which the group's label names. Each group is summarised over its seeds:

* ``mean ± std`` of the final evaluation (``std`` with ddof 0, as CORL and most RL papers report);
* the interquartile mean (IQM: the mean of the middle 50 % of seeds, ``floor(n / 4)`` trimmed from
  each end, as rliable's ``trim_mean(x, 0.25)``) with a 95 % percentile-bootstrap confidence interval
  (seeds resampled with replacement, ``BOOTSTRAP_SAMPLES`` times, fixed generator);
* the same for the best evaluation of each run.

The score is the normalized score where every run of the group has one (offline runs with reference
scores), else the raw evaluation return. A run without ``summary.json`` (crashed, killed or still
running) counts as failed and is named. A seed run more than once in a group counts once (its
finished run, the newest of several) and is flagged. A learning curve ends at its run's last
evaluation: the mean over seeds is drawn solid, with a ±1 std band, where every seed has data, and
dashed, without a band, where only some have. ``scripts/results_table.py`` and
``scripts/plot_curves.py`` are the command-line front ends.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from rltrain.extras import require
from rltrain.sources.base import CLOCKS

BOOTSTRAP_SAMPLES = 2000
AXIS_LABELS = {"env_step": "env steps", "update": "gradient updates",
               "step": "steps (offline updates, then online env steps)"}
CONFIDENCE = 0.95


# Keys that never change what a run learns: where it was written, how it was named or logged.
IGNORED_KEYS = {"seed", "seeds", "resume", "run_root", "sweep_name", "torch_threads", "trainer.log_every",
                "trainer.policy_snapshots"}
IGNORED_PREFIXES = ("logger.",)
ABSENT = "<absent>"


@dataclass
class Run:
    """One run directory: what it trained (``config``: its resolved config's leaves, dotted keys,
    without ``IGNORED_KEYS``), and what it reached (``summary`` is ``None`` while unfinished)."""

    path: Path
    algo: str
    task: str
    seed: int
    clock: str            # the eval.csv column of the run's clock: env_step, update or step
    summary: dict | None
    config: dict[str, str] = field(default_factory=dict)

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def score(self, which: str, normalized: bool) -> float | None:
        """The ``final`` or ``best`` evaluation: normalized score or raw return."""
        if self.summary is None:
            return None
        key = f"{which}_normalized_score" if normalized else f"{which}_eval_return"
        return self.summary.get(key)

    def curve(self) -> tuple[str, np.ndarray, np.ndarray, bool]:
        """(x label, steps, scores, normalized) from ``eval.csv``, against the run's own clock."""
        with (self.path / "eval.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        x_key = self.clock
        normalized = bool(rows) and rows[0].get("normalized_score", "") != ""
        y_key = "normalized_score" if normalized else "return_mean"
        return x_key, np.array([float(r[x_key]) for r in rows]), np.array([float(r[y_key]) for r in rows]), normalized


def config_leaves(cfg, prefix: str = "") -> dict[str, str]:
    """``dotted.key -> value`` (as text) for every leaf of ``cfg`` that can change a result."""
    leaves = {}
    for key, value in cfg.items():
        name = f"{prefix}{key}"
        if name in IGNORED_KEYS or name.startswith(IGNORED_PREFIXES):
            continue
        if OmegaConf.is_dict(value):
            leaves |= config_leaves(value, f"{name}.")
        else:
            leaves[name] = str(OmegaConf.to_object(value) if OmegaConf.is_list(value) else value)
    return leaves


def run_clock(cfg) -> str:
    """The clock a run counted, from its ``config.yaml``: the source kind it recorded. Runs written
    before sources existed record none: theirs was updates with a dataset alone, else env steps."""
    kind = OmegaConf.select(cfg, "source.kind")
    if kind in CLOCKS:
        return CLOCKS[kind]
    algo = cfg.algo
    learns_offline = cfg.get("dataset") and not algo.get("on_policy") and not algo.get("imitation")
    return "update" if learns_offline else "env_step"


def find_runs(root: str | Path) -> list[Run]:
    """Every run directory under ``root`` (Hydra's own ``.hydra`` copies are skipped), oldest first
    (by the time its ``config.yaml`` was written)."""
    runs = []
    config_files = [f for f in Path(root).rglob("config.yaml") if not f.parent.name.startswith(".hydra")]
    for config_file in sorted(config_files, key=lambda f: (f.stat().st_mtime, str(f))):
        cfg = OmegaConf.load(config_file)
        if "algo" not in cfg or "seed" not in cfg:
            continue
        dataset = cfg.get("dataset")
        task = dataset.id if dataset else cfg.env.id
        summary_file = config_file.parent / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
        runs.append(Run(config_file.parent, str(cfg.algo.name), str(task), int(cfg.seed), run_clock(cfg), summary,
                        config_leaves(cfg)))
    return runs


def iqm(values: np.ndarray) -> float:
    """Interquartile mean: ``floor(n / 4)`` values trimmed from each end, then the mean."""
    ordered = np.sort(np.asarray(values, dtype=float))
    cut = len(ordered) // 4
    return float(ordered[cut:len(ordered) - cut].mean())


def bootstrap_ci(values: np.ndarray, statistic=iqm, samples: int = BOOTSTRAP_SAMPLES,
                 confidence: float = CONFIDENCE, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``statistic`` over resampled ``values``."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    draws = rng.integers(len(values), size=(samples, len(values)))
    stats = np.array([statistic(values[row]) for row in draws])
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(stats, [tail, 100 - tail])
    return float(low), float(high)


@dataclass
class Stats:
    mean: float
    std: float
    iqm: float
    ci_low: float
    ci_high: float

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        array = np.asarray(values, dtype=float)
        low, high = bootstrap_ci(array)
        return cls(float(array.mean()), float(array.std()), iqm(array), low, high)


@dataclass
class Cell:
    """A group of runs: one task and algorithm, and one value of each config key that differs among
    that pair's runs (``variant``: ``"key=value, ..."``, empty when they all agree)."""

    task: str
    algo: str
    variant: str = ""
    runs: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.algo} [{self.variant}]" if self.variant else self.algo

    @property
    def counted(self) -> list[Run]:
        """One run per seed: its finished run, the newest of several (runs are kept oldest first)."""
        by_seed: dict[int, Run] = {}
        for run in self.runs:
            kept = by_seed.get(run.seed)
            if kept is None or run.finished or not kept.finished:
                by_seed[run.seed] = run
        return [by_seed[seed] for seed in sorted(by_seed)]

    @property
    def duplicate_seeds(self) -> dict[int, int]:
        """seed -> number of runs, for the seeds run more than once."""
        counts: dict[int, int] = defaultdict(int)
        for run in self.runs:
            counts[run.seed] += 1
        return {seed: n for seed, n in sorted(counts.items()) if n > 1}

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.counted if run.finished]

    @property
    def failed(self) -> list[Run]:
        return [run for run in self.counted if not run.finished]

    @property
    def normalized(self) -> bool:
        return bool(self.finished) and all(run.score("final", True) is not None for run in self.finished)

    def stats(self, which: str) -> Stats | None:
        scores = [run.score(which, self.normalized) for run in self.finished]
        scores = [s for s in scores if s is not None and math.isfinite(s)]
        return Stats.of(scores) if scores else None

    def notes(self) -> str:
        """The failed and the duplicate seeds, in words (empty when there are none)."""
        notes = []
        if self.failed:
            notes.append(f"{len(self.failed)} failed: seed {', '.join(str(r.seed) for r in self.failed)}")
        for seed, n in self.duplicate_seeds.items():
            notes.append(f"seed {seed} ran {n}×, counted once")
        return "; ".join(notes)


def variants(runs: list[Run]) -> list[str]:
    """Per run, ``"key=value, ..."`` over the config keys whose value is not the same in all ``runs``
    (a key a run lacks reads ``<absent>``)."""
    keys = sorted(set().union(*(run.config for run in runs)))
    differing = [k for k in keys if len({run.config.get(k, ABSENT) for run in runs}) > 1]
    return [", ".join(f"{k}={run.config.get(k, ABSENT)}" for k in differing) for run in runs]


def group_cells(runs: list[Run]) -> dict[tuple[str, str, str], Cell]:
    """(task, algo, variant) -> the group of those runs; see :func:`variants`."""
    by_pair: dict[tuple[str, str], list[Run]] = defaultdict(list)
    for run in runs:
        by_pair[run.task, run.algo].append(run)
    cells: dict[tuple[str, str, str], Cell] = {}
    for (task, algo), pair_runs in by_pair.items():
        for run, variant in zip(pair_runs, variants(pair_runs)):
            cells.setdefault((task, algo, variant), Cell(task, algo, variant)).runs.append(run)
    return dict(sorted(cells.items()))


def _stats_text(cell: Cell, which: str) -> str:
    stats = cell.stats(which)
    if stats is None:
        return "no finished run"
    return f"{stats.mean:.1f} ± {stats.std:.1f}; IQM {stats.iqm:.1f} [{stats.ci_low:.1f}, {stats.ci_high:.1f}]"


def missing_pairs(cells: dict[tuple[str, str, str], Cell]) -> list[tuple[str, str]]:
    """The (task, algo) pairs of the grid the runs span that have no run at all."""
    tasks = sorted({cell.task for cell in cells.values()})
    algos = sorted({cell.algo for cell in cells.values()})
    present = {(cell.task, cell.algo) for cell in cells.values()}
    return [(task, algo) for task in tasks for algo in algos if (task, algo) not in present]


def markdown_table(cells: dict[tuple[str, str, str], Cell]) -> str:
    """One row per group (and per missing task x algorithm pair): n, final and best evaluation."""
    kinds = {cell.normalized for cell in cells.values() if cell.finished}
    unit = "normalized score" if kinds == {True} else "return" if kinds == {False} else "score or return"
    rows = [(cell.task, cell.algo, f"| {cell.task} | {cell.label} | {len(cell.finished)} | {_stats_text(cell, 'final')} "
             f"| {_stats_text(cell, 'best')} | {cell.notes()} |") for cell in cells.values()]
    rows += [(task, algo, f"| {task} | {algo} | 0 | missing | missing | |") for task, algo in missing_pairs(cells)]
    lines = [f"**Final and best evaluation** ({unit}; mean ± std over seeds; IQM [95% bootstrap CI]; n = finished "
             "seeds, each counted once). Runs are grouped by every config key that differs between them except "
             "the seed; a group's label names its values.", "",
             "| task | algorithm | n | final evaluation | best evaluation | notes |", "|---|---|---|---|---|---|"]
    lines += [row for *_, row in sorted(rows, key=lambda r: r[:2])]
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ["task", "algo", "variant", "metric", "finished", "failed", "seeds", "duplicate_seeds", "final_mean",
               "final_std", "final_iqm", "final_ci_low", "final_ci_high", "best_mean", "best_std", "best_iqm",
               "best_ci_low", "best_ci_high"]


def csv_rows(cells: dict[tuple[str, str, str], Cell]) -> list[dict]:
    rows = []
    for cell in cells.values():
        row = {"task": cell.task, "algo": cell.algo, "variant": cell.variant,
               "metric": "normalized_score" if cell.normalized else "return", "finished": len(cell.finished),
               "failed": len(cell.failed), "seeds": " ".join(str(r.seed) for r in cell.finished),
               "duplicate_seeds": " ".join(f"{seed}x{n}" for seed, n in cell.duplicate_seeds.items())}
        for which in ("final", "best"):
            stats = cell.stats(which)
            for name in ("mean", "std", "iqm", "ci_low", "ci_high"):
                row[f"{which}_{name}"] = "" if stats is None else getattr(stats, name)
        rows.append(row)
    return rows


def write_table(root: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """``results.md`` and ``results.csv`` in ``out_dir`` from the runs under ``root``."""
    cells = group_cells(find_runs(root))
    if not cells:
        raise FileNotFoundError(f"no rltrain runs (directories with config.yaml) under {root}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    markdown, table = out_dir / "results.md", out_dir / "results.csv"
    markdown.write_text(markdown_table(cells))
    with table.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        writer.writeheader()
        writer.writerows(csv_rows(cells))
    return markdown, table


@dataclass
class MeanCurve:
    """The mean over seeds of a group's curves on the union of their evaluation steps. Each seed
    covers only its own first to last evaluation (no extrapolation); ``count`` says how many seeds
    have data at each step."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    count: np.ndarray
    n: int

    @classmethod
    def of(cls, curves: list[tuple[np.ndarray, np.ndarray]]) -> MeanCurve:
        steps = np.unique(np.concatenate([s for s, _ in curves]))
        values = np.full((len(curves), len(steps)), np.nan)
        for row, (run_steps, scores) in zip(values, curves):
            covered = (steps >= run_steps[0]) & (steps <= run_steps[-1])
            row[covered] = np.interp(steps[covered], run_steps, scores)
        count = (~np.isnan(values)).sum(0)
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(values, axis=0)
            std = np.nanstd(values, axis=0)
        return cls(steps, mean, std, count, len(curves))

    @property
    def complete(self) -> np.ndarray:
        """Steps where every seed has data."""
        return self.count == self.n


def _draw_group(ax, cell: Cell, curve: MeanCurve) -> None:
    full = np.where(curve.complete, curve.mean, np.nan)
    label = f"{cell.label} (n={curve.n})"
    if not curve.complete.all():
        fewest = int(curve.count.min())
        seeds = f"{curve.n - 1}" if fewest == curve.n - 1 else f"{fewest}-{curve.n - 1}"
        label += f"; dashed: {seeds} of {curve.n} seeds"
    (line,) = ax.plot(curve.steps, full, label=label)
    partial = curve.count < curve.n
    # the dashed part joins the solid one: widen the mask by one step on each side
    near_partial = partial | np.r_[partial[1:], False] | np.r_[False, partial[:-1]]
    ax.plot(curve.steps, np.where(near_partial, curve.mean, np.nan), linestyle="--", color=line.get_color())
    ax.fill_between(curve.steps, full - curve.std, full + curve.std, alpha=0.25, color=line.get_color())


def plot_curves(root: str | Path, out_file: str | Path) -> Path:
    """Learning curves, one panel per task, one line per group of runs (see the module docstring)."""
    matplotlib = require("matplotlib", "plots", "plot_curves")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[tuple[Cell, MeanCurve, str, bool]]] = defaultdict(list)
    for cell in group_cells(find_runs(root)).values():
        curves = [run.curve() for run in cell.counted if (run.path / "eval.csv").exists()]
        curves = [c for c in curves if len(c[1])]
        if curves:
            x_label, _, _, normalized = curves[0]
            panels[cell.task].append((cell, MeanCurve.of([(s, y) for _, s, y, _ in curves]), x_label, normalized))
    if not panels:
        raise FileNotFoundError(f"no rltrain runs with eval.csv under {root}")
    tasks = sorted(panels)
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for cell, curve, x_label, normalized in panels[task]:
            _draw_group(ax, cell, curve)
        ax.set_title(task)
        ax.set_xlabel(AXIS_LABELS[x_label])
        ax.set_ylabel("normalized score" if normalized else "evaluation return")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    fig.tight_layout()
    out_file = Path(out_file)
    out_file.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_file, dpi=120)
    plt.close(fig)
    return out_file
