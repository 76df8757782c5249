"""The results table and learning-curve plots on synthetic run folders with known numbers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from omegaconf import OmegaConf

from rltrain.results import MeanCurve, bootstrap_ci, find_runs, group_cells, iqm, markdown_table, plot_curves, write_table


def make_run(root, algo: str, task: str, seed: int, final: float | None, best: float | None = None,
             offline: bool = False, curve: list[tuple[int, float]] | None = None, lr: float = 3e-4, attempt: int = 0):
    """A run directory as ``python -m rltrain`` leaves it; ``final=None`` = it never finished; ``attempt``
    tells apart two runs of one seed."""
    run = root / algo / task / f"seed{seed}-lr{lr}-{attempt}"
    run.mkdir(parents=True)
    dataset = {"id": task} if offline else None
    OmegaConf.save(OmegaConf.create({"seed": seed, "algo": {"name": algo, "optim": {"lr": lr}},
                                     "env": {"id": "Pendulum-v1" if offline else task}, "dataset": dataset,
                                     "run_root": str(root), "logger": {"wandb": {"name": f"job-{seed}-{attempt}"}}}),
                   run / "config.yaml")
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
    assert (td3["finished"], td3["failed"], td3["variant"]) == ("1", "1", "")
    text = markdown.read_text()
    assert "| Pendulum-v1 | td3 | 1 | -5.0 ± 0.0; IQM -5.0 [-5.0, -5.0] | -5.0 ± 0.0; IQM -5.0 [-5.0, -5.0] | " \
           "1 failed: seed 1 |" in text
    assert "| Hopper-v5 | sac | 0 | missing | missing | |" in text
    assert "| Hopper-v5 | td3 | 1 | 300.0 ± 0.0" in text
    assert "**Final and best evaluation** (return;" in text


def test_offline_cells_use_the_normalized_score(tmp_path):
    for seed, score in enumerate([40.0, 60.0]):
        make_run(tmp_path, "iql", "rltrain/pendulum/medium-v0", seed, score, offline=True)
    cells = group_cells(find_runs(tmp_path))
    cell = cells["rltrain/pendulum/medium-v0", "iql", ""]
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
                 curve=[(500 * (seed + 1), 10.0), (4000 - 1000 * seed, 50.0)])   # different steps and lengths
    out = plot_curves(tmp_path, tmp_path / "plots" / "curves.png")
    image = matplotlib.image.imread(out)
    assert out.stat().st_size > 10_000
    assert image.shape[1] > 1.8 * image.shape[0]                     # two panels side by side
    assert image[..., :3].std() > 0.05                               # something was drawn


def test_runs_that_differ_in_a_hyperparameter_are_separate_groups(tmp_path):
    for seed in (0, 1):
        make_run(tmp_path, "sac", "Pendulum-v1", seed, -200.0 - seed, lr=3e-4)
        make_run(tmp_path, "sac", "Pendulum-v1", seed, -900.0 - seed, lr=1e-2)
    make_run(tmp_path, "td3", "Pendulum-v1", 0, -300.0, lr=1e-2)   # alone in its pair: no variant to name
    cells = group_cells(find_runs(tmp_path))
    assert set(cells) == {("Pendulum-v1", "sac", "algo.optim.lr=0.0003"), ("Pendulum-v1", "sac", "algo.optim.lr=0.01"),
                          ("Pendulum-v1", "td3", "")}
    good = cells["Pendulum-v1", "sac", "algo.optim.lr=0.0003"]
    assert len(good.finished) == 2 and good.stats("final").mean == pytest.approx(-200.5)
    text = markdown_table(cells)
    assert "| Pendulum-v1 | sac [algo.optim.lr=0.01] | 2 | -900.5 ± 0.5" in text
    assert "| Pendulum-v1 | td3 | 1 |" in text


def test_a_seed_run_twice_counts_once_and_is_flagged(tmp_path):
    make_run(tmp_path, "sac", "Pendulum-v1", 0, None, attempt=0)        # crashed, then rerun
    make_run(tmp_path, "sac", "Pendulum-v1", 0, -150.0, attempt=1)
    make_run(tmp_path, "sac", "Pendulum-v1", 1, -170.0, attempt=0)
    make_run(tmp_path, "sac", "Pendulum-v1", 1, -190.0, attempt=1)      # a second finished run of seed 1
    (cell,) = group_cells(find_runs(tmp_path)).values()
    assert [r.seed for r in cell.finished] == [0, 1] and not cell.failed
    assert cell.duplicate_seeds == {0: 2, 1: 2}
    assert cell.stats("final").mean == pytest.approx(-170.0)            # -150 and the newer -190
    assert "seed 0 ran 2×, counted once; seed 1 ran 2×, counted once" in markdown_table({("t", "sac", ""): cell})
    markdown, table = write_table(tmp_path, tmp_path / "out")
    (row,) = csv.DictReader(table.open())
    assert (row["finished"], row["seeds"], row["duplicate_seeds"]) == ("2", "0 1", "0x2 1x2")


def test_a_mean_curve_never_extends_a_run_past_its_last_evaluation():
    long = (np.array([1000.0, 2000.0, 3000.0, 4000.0]), np.array([0.0, 10.0, 20.0, 30.0]))
    short = (np.array([1000.0, 2000.0]), np.array([100.0, 110.0]))            # crashed after 2k steps
    offset = (np.array([1500.0, 2500.0, 4000.0]), np.array([40.0, 50.0, 60.0]))  # evaluated at other steps
    curve = MeanCurve.of([long, short, offset])
    assert list(curve.steps) == [1000, 1500, 2000, 2500, 3000, 4000]
    assert list(curve.count) == [2, 3, 3, 2, 2, 2]
    assert list(curve.complete) == [False, True, True, False, False, False]
    assert curve.mean[-1] == pytest.approx(45.0)          # long and offset only: the short run is not carried on
    assert curve.mean[1] == pytest.approx((5.0 + 105.0 + 40.0) / 3)   # interpolated inside each run's own range
    assert curve.mean[0] == pytest.approx(50.0)           # offset starts later: not extended backwards either
