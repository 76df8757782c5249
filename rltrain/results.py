"""Finished runs -> benchmark tables and learning curves.

A *run* is a directory written by ``python -m rltrain`` (``config.yaml``; ``summary.json`` once it
finished; ``eval.csv``). Runs are grouped into *cells* by (task, algorithm), where the task is the
dataset id offline and the env id online, and each cell is summarised over its seeds:

* ``mean ± std`` of the final evaluation (``std`` with ddof 0, as CORL and most RL papers report);
* the interquartile mean (IQM: the mean of the middle 50 % of seeds, ``floor(n / 4)`` trimmed from
  each end, as rliable's ``trim_mean(x, 0.25)``) with a 95 % percentile-bootstrap confidence interval
  (seeds resampled with replacement, ``BOOTSTRAP_SAMPLES`` times, fixed generator);
* the same for the best evaluation of each run.

The score is the normalized score where every run of the cell has one (offline runs with reference
scores), else the raw evaluation return. A run without ``summary.json`` (crashed, killed or still
running) counts as failed and is named in its cell. ``scripts/results_table.py`` and
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

from rltrain.sources.base import CLOCKS

BOOTSTRAP_SAMPLES = 2000
AXIS_LABELS = {"env_step": "env steps", "update": "gradient updates",
               "step": "steps (offline updates, then online env steps)"}
CONFIDENCE = 0.95


@dataclass
class Run:
    """One run directory: what it trained and what it reached (``None`` while unfinished)."""

    path: Path
    algo: str
    task: str
    seed: int
    clock: str            # the eval.csv column of the run's clock: env_step, update or step
    summary: dict | None

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
    """Every run directory under ``root`` (Hydra's own ``.hydra`` copies are skipped)."""
    runs = []
    for config_file in sorted(Path(root).rglob("config.yaml")):
        if config_file.parent.name.startswith(".hydra"):
            continue
        cfg = OmegaConf.load(config_file)
        if "algo" not in cfg or "seed" not in cfg:
            continue
        dataset = cfg.get("dataset")
        task = dataset.id if dataset else cfg.env.id
        summary_file = config_file.parent / "summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else None
        runs.append(Run(config_file.parent, str(cfg.algo.name), str(task), int(cfg.seed), run_clock(cfg), summary))
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
    """The runs of one (task, algorithm) pair and their statistics."""

    task: str
    algo: str
    runs: list[Run] = field(default_factory=list)

    @property
    def finished(self) -> list[Run]:
        return [run for run in self.runs if run.finished]

    @property
    def failed(self) -> list[Run]:
        return [run for run in self.runs if not run.finished]

    @property
    def normalized(self) -> bool:
        return bool(self.finished) and all(run.score("final", True) is not None for run in self.finished)

    def stats(self, which: str) -> Stats | None:
        scores = [run.score(which, self.normalized) for run in self.finished]
        scores = [s for s in scores if s is not None and math.isfinite(s)]
        return Stats.of(scores) if scores else None


def group_cells(runs: list[Run]) -> dict[tuple[str, str], Cell]:
    cells: dict[tuple[str, str], Cell] = {}
    for run in runs:
        cells.setdefault((run.task, run.algo), Cell(run.task, run.algo)).runs.append(run)
    return cells


def _cell_text(cell: Cell | None, which: str) -> str:
    if cell is None:
        return "missing"
    stats = cell.stats(which)
    failed = f" ({len(cell.failed)} failed: seed {', '.join(str(r.seed) for r in cell.failed)})" if cell.failed else ""
    if stats is None:
        return f"no finished run{failed}"
    return (f"{stats.mean:.1f} ± {stats.std:.1f}; IQM {stats.iqm:.1f} [{stats.ci_low:.1f}, {stats.ci_high:.1f}] "
            f"(n={len(cell.finished)}){failed}")


def markdown_table(cells: dict[tuple[str, str], Cell]) -> str:
    """Two tables (final and best evaluation): one row per task, one column per algorithm."""
    tasks = sorted({task for task, _ in cells})
    algos = sorted({algo for _, algo in cells})
    lines = []
    for which in ("final", "best"):
        kinds = {cells[k].normalized for k in cells if cells[k].finished}
        unit = "normalized score" if kinds == {True} else "return" if kinds == {False} else "score or return"
        lines += [f"**{which.capitalize()} evaluation** ({unit}; mean ± std over seeds; IQM [95% bootstrap CI])", "",
                  "| task | " + " | ".join(algos) + " |", "|---|" + "---|" * len(algos)]
        for task in tasks:
            lines.append(f"| {task} | " + " | ".join(_cell_text(cells.get((task, a)), which) for a in algos) + " |")
        lines.append("")
    return "\n".join(lines)


CSV_COLUMNS = ["task", "algo", "metric", "finished", "failed", "final_mean", "final_std", "final_iqm",
               "final_ci_low", "final_ci_high", "best_mean", "best_std", "best_iqm", "best_ci_low", "best_ci_high"]


def csv_rows(cells: dict[tuple[str, str], Cell]) -> list[dict]:
    rows = []
    for (task, algo), cell in sorted(cells.items()):
        row = {"task": task, "algo": algo, "metric": "normalized_score" if cell.normalized else "return",
               "finished": len(cell.finished), "failed": len(cell.failed)}
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


def plot_curves(root: str | Path, out_file: str | Path) -> Path:
    """Learning curves, one panel per task: per algorithm the mean over seeds with a ±1 std band
    (seeds evaluated at different steps are interpolated onto the union of their steps)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in find_runs(root):
        if (run.path / "eval.csv").exists():
            curves[run.task][run.algo].append(run.curve())
    if not curves:
        raise FileNotFoundError(f"no rltrain runs with eval.csv under {root}")
    tasks = sorted(curves)
    columns = min(3, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for algo, runs in sorted(curves[task].items()):
            x_label, _, _, normalized = runs[0]
            grid = np.unique(np.concatenate([steps for _, steps, _, _ in runs]))
            ys = np.stack([np.interp(grid, steps, scores) for _, steps, scores, _ in runs])
            mean, std = ys.mean(0), ys.std(0)
            ax.plot(grid, mean, label=f"{algo} (n={len(runs)})")
            ax.fill_between(grid, mean - std, mean + std, alpha=0.25)
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
