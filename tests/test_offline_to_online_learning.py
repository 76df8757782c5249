"""Offline-to-online learning checks on the suite's own Pendulum-v1 medium dataset (made by
``rltrain.make_dataset`` from a policy snapshot of the shared SAC run, see ``tests/conftest.py``),
seed 0, 64x64 networks:

- IQL (the dataset copied into the replay buffer) and Cal-QL (50/50 sampling) fine-tuned online for
  4k env steps end the online phase at a normalized score at least 10 points above their last
  offline evaluation.
- RLPD's first evaluation at a return >= -250 comes no later, in env steps, than SAC's from scratch
  (the shared run: same seed, networks, warm-up and evaluation schedule, every 500 env steps). RLPD runs at 2 updates per
  env step here instead of its 20, to fit the suite's budget.

Cal-QL uses the penalty settings of the offline CQL check (weight 1, 4 sampled actions, actor lr
3e-4): CORL's weight 10 is tuned to D4RL's reward scale.
"""

from __future__ import annotations

import csv
import json

import pytest

from tests.helpers import LEARNING_NETS, only_run_dir, run_cli

pytestmark = pytest.mark.slow

RLPD_THRESHOLD = -250.0
O2O = [*LEARNING_NETS, "dataset=minari", "trainer.eval_every=1000", "trainer.checkpoint_every=100000", "seed=0"]
FINETUNE = ["source=offline_to_online", "source.offline_updates=2000", "source.online_env_steps=4000",
            "trainer.warmup_steps=0", "trainer.learning_starts=0"]
CASES = {
    "iql": ["algo=iql", *FINETUNE],
    "cal_ql": ["algo=cal_ql", *FINETUNE, "algo.loss.min_q_weight=1.0", "algo.loss.num_random=4",
               "algo.optim.actor.lr=3e-4"],
}


def eval_rows(run_dir) -> list[dict]:
    with (run_dir / "eval.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("algo", list(CASES))
def test_online_fine_tuning_improves_on_the_offline_policy(tmp_path, medium_datasets, algo):
    run_cli([*O2O, f"dataset.id={medium_datasets['pendulum']}", *CASES[algo]], tmp_path, timeout=900)
    run_dir = only_run_dir(tmp_path)
    rows = eval_rows(run_dir)
    assert [r["phase"] for r in rows] == ["offline"] * 2 + ["online"] * 4
    summary = json.loads((run_dir / "summary.json").read_text())
    offline, online = summary["final_offline_normalized_score"], summary["final_online_normalized_score"]
    scores = [round(float(r["normalized_score"]), 1) for r in rows]
    assert online >= offline + 10.0, f"{algo}: offline {offline:.1f} -> online {online:.1f}; scores {scores}"


def first_step_reaching(rows: list[dict], threshold: float) -> float:
    return next((int(r["env_step"]) for r in rows if float(r["return_mean"]) >= threshold), float("inf"))


def test_rlpd_reaches_a_good_return_no_later_than_sac_from_scratch(tmp_path, medium_datasets, learning_run):
    run_cli([*O2O, f"dataset.id={medium_datasets['pendulum']}", "algo=rlpd", "source.online_env_steps=4000",
             "trainer.eval_every=500", "trainer.updates_per_step=2", "trainer.warmup_steps=1000",
             "trainer.learning_starts=1000"],
            tmp_path, timeout=900)
    rlpd = eval_rows(only_run_dir(tmp_path))
    sac = eval_rows(learning_run("sac_pendulum", 0))
    rlpd_step, sac_step = first_step_reaching(rlpd, RLPD_THRESHOLD), first_step_reaching(sac, RLPD_THRESHOLD)
    returns = [round(float(r["return_mean"])) for r in rlpd]
    assert rlpd_step <= sac_step, f"RLPD first >= {RLPD_THRESHOLD} at {rlpd_step}, SAC at {sac_step}; RLPD {returns}"
