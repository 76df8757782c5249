"""The results table and learning-curve plots on synthetic run folders with known numbers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from rltrain.results import bootstrap_ci, find_runs, group_cells, iqm, markdown_table, plot_curves, write_table


def make_run(root, algo: str, task: str, seed: int, final: float | None, best: float | None = None,
             offline: bool = False, curve: list[tuple[int, float]] | None = None):
    """A run directory as ``python -m rltrain`` leaves it; ``final=None`` = it never finished."""
    run = root / algo / task / f"seed{seed}"
    run.mkdir(parents=True)
    dataset = {"id": task} if offline else None
    OmegaConf.save(OmegaConf.create({"seed": seed, "algo": {"name": algo}, "env": {"id": "Pendulum-v1" if offline
                                                                                    else task},
                                     "dataset": dataset}), run / "config.yaml")
    curve = curve or [(1000, 0.0), (2000, final or 0.0)]
    score_key = "normalized_score" if offline else "return_mean"
    with (run / "eval.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["env_step", "update", "return_mean", "normalized_score"])
        writer.writeheader()
        for step, value in curve:
            writer.writerow({"env_step": 0 if offline else step, "update": step if offline else step // 2,
                             "return_mean": value if not offline else value * 10, score_key: value,
                             **({} if offline else {"normalized_score": ""})})
    if final is not None:
        summary = {"final_eval_return": final, "best_eval_return": best if best is not None else final,
                   "mode": "offline" if offline else "online"}
        if offline:
            summary |= {"final_normalized_score": final, "best_normalized_score": best if best is not None else final,
                        "final_eval_return": final * 10}
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def test_iqm_trims_a_quarter_from_each_end():
    assert iqm(np.array([10.0, 1.0, 3.0, 2.0])) == 2.5            # n=4: drop 1 and 10
    assert iqm(np.array([5.0, 1.0, 100.0, 2.0, 3.0, 4.0, 6.0, 7.0])) == pytest.approx(4.5)  # n=8: drop 2 per end
    assert iqm(np.array([3.0, 1.0, 2.0])) == 2.0                  # n=3: nothing to trim -> mean


def test_bootstrap_interval_brackets_the_iqm_and_has_the_expected_width():
    assert bootstrap_ci(np.full(5, 7.0)) == (7.0, 7.0)
    values = np.random.default_rng(1).normal(0.0, 1.0, 400)
    low, high = bootstrap_ci(values)
    assert low < iqm(values) < high
    # The IQM of N(0, 1) has a standard error of about 1.14 / sqrt(n): a 95 % interval ~0.22 wide here.
    assert 0.15 < high - low < 0.30 and low < 0 < high


def test_table_numbers_for_a_grid_with_a_failed_and_a_missing_cell(tmp_path):
    for seed, final, best in [(0, 1.0, 1.5), (1, 2.0, 2.0), (2, 3.0, 4.0), (3, 10.0, 12.0)]:
        make_run(tmp_path, "sac", "Pendulum-v1", seed, final, best)
    make_run(tmp_path, "td3", "Pendulum-v1", 0, -5.0)
    make_run(tmp_path, "td3", "Pendulum-v1", 1, None)            # crashed: no summary.json
    make_run(tmp_path, "td3", "Hopper-v5", 0, 300.0)             # no SAC on Hopper: a missing cell
    markdown, table = write_table(tmp_path, tmp_path / "out")
    rows = {(r["task"], r["algo"]): r for r in csv.DictReader(table.open())}

    sac = rows["Pendulum-v1", "sac"]
    assert (sac["finished"], sac["failed"], sac["metric"]) == ("4", "0", "return")
    assert float(sac["final_mean"]) == pytest.approx(4.0)
    assert float(sac["final_std"]) == pytest.approx(np.sqrt(50 / 4))   # ddof 0
    assert float(sac["final_iqm"]) == pytest.approx(2.5)
    assert float(sac["best_mean"]) == pytest.approx(4.875) and float(sac["best_iqm"]) == pytest.approx(3.0)
    low, high = bootstrap_ci(np.array([1.0, 2.0, 3.0, 10.0]))
    assert (float(sac["final_ci_low"]), float(sac["final_ci_high"])) == pytest.approx((low, high))
    assert 1.0 <= low <= 2.5 <= high <= 10.0

    td3 = rows["Pendulum-v1", "td3"]
    assert (td3["finished"], td3["failed"]) == ("1", "1")
    text = markdown.read_text()
    assert "-5.0 ± 0.0; IQM -5.0 [-5.0, -5.0] (n=1) (1 failed: seed 1)" in text
    assert "| Hopper-v5 | missing | 300.0 ± 0.0" in text
    assert "**Final evaluation** (return" in text and "**Best evaluation**" in text


def test_offline_cells_use_the_normalized_score(tmp_path):
    for seed, score in enumerate([40.0, 60.0]):
        make_run(tmp_path, "iql", "rltrain/pendulum/medium-v0", seed, score, offline=True)
    cells = group_cells(find_runs(tmp_path))
    cell = cells["rltrain/pendulum/medium-v0", "iql"]
    assert cell.normalized and cell.stats("final").mean == 50.0   # not the returns (400, 600)
    assert "(normalized score;" in markdown_table(cells)


def test_no_runs_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no rltrain runs"):
        write_table(tmp_path, tmp_path)


def test_learning_curve_plot_has_a_panel_per_task(tmp_path):
    import matplotlib.image

    for seed in range(3):
        make_run(tmp_path, "sac", "Pendulum-v1", seed, -200.0,
                 curve=[(1000, -1200.0 + seed), (2000, -600.0), (3000, -200.0 - seed)])
        make_run(tmp_path, "iql", "rltrain/pendulum/medium-v0", seed, 50.0, offline=True,
                 curve=[(500 * (seed + 1), 10.0), (4000, 50.0)])     # seeds evaluated at different steps
    out = plot_curves(tmp_path, tmp_path / "plots" / "curves.png")
    image = matplotlib.image.imread(out)
    assert out.stat().st_size > 10_000
    assert image.shape[1] > 1.8 * image.shape[0]                     # two panels side by side
    assert image[..., :3].std() > 0.05                               # something was drawn
