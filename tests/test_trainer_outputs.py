"""What a run leaves besides its metrics: the best evaluation's policy (checkpoints/best.pt) and
training-time videos (trainer.video_every)."""

from __future__ import annotations

import csv
import json

import imageio_ffmpeg
import torch
from hydra import compose, initialize_config_module

import rltrain
from rltrain.build import build_trainer
from rltrain.checkpoint import load
from rltrain.envs import derive_seed

RUN = ["device=cpu", "logger.progress=false", "network.actor.num_cells=[16,16]", "network.critic.num_cells=[16,16]",
       "trainer.total_env_steps=600", "trainer.warmup_steps=100", "trainer.learning_starts=100",
       "trainer.eval_every=200", "trainer.eval_episodes=2", "env.eval_num_envs=2", "trainer.checkpoint_every=600",
       "torch_threads=1", "seed=3"]


def train(tmp_path, *overrides):
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        cfg = compose("config", overrides=[*RUN, *overrides])
    trainer = build_trainer(cfg, tmp_path)
    return trainer, trainer.fit()


def test_best_checkpoint_holds_the_best_evaluation_and_loads(tmp_path):
    summary = rltrain.train(RUN, run_dir=tmp_path)
    with (tmp_path / "eval.csv").open(newline="") as f:
        returns = [float(row["return_mean"]) for row in csv.DictReader(f)]
    best = load(tmp_path / "checkpoints" / "best.pt")
    assert best["eval"]["return_mean"] == max(returns) == summary["best_eval_return"]
    assert best["eval"]["env_step"] == summary["best_eval_step"]
    last = load(tmp_path / "checkpoints" / "last.pt")["objective"]
    assert set(best["objective"]) == set(last)
    if best["eval"]["env_step"] != summary["env_steps"]:  # the best is not the last: the weights differ
        assert any(not torch.equal(best["objective"][k], last[k]) for k in last if last[k].is_floating_point())
    agent = rltrain.load_agent(tmp_path, checkpoint="best")
    assert agent.step == best["eval"]["env_step"]
    assert rltrain.evaluate(agent, episodes=2, seed=0)["return_mean"] < 0


def test_video_every_records_evaluation_episodes(tmp_path):
    train(tmp_path, "trainer.video_every=300")
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["step_000000300.mp4", "step_000000600.mp4"]
    assert all(imageio_ffmpeg.count_frames_and_secs(str(v))[0] == 201 for v in videos)  # Pendulum: 200 steps + reset
    with (tmp_path / "videos.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["env_step"]) for r in rows] == [300, 600] and all(float(r["video_return"]) < 0 for r in rows)
    assert json.loads((tmp_path / "summary.json").read_text())["env_steps"] == 600


def test_running_normalizer_merges_batches_like_one_pass():
    from rltrain.data.normalize import RunningObservationNormalizer, normalizer_from_state

    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 3, generator=g) * 5 + 2 for n in (7, 1, 40)]
    normalizer = RunningObservationNormalizer(3)
    for part in parts:
        normalizer.update(part)
    whole = torch.cat(parts).double()
    torch.testing.assert_close(normalizer.mean.double(), whole.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalizer.var, whole.var(0, correction=0), atol=1e-4, rtol=1e-4)
    assert normalizer(torch.full((1, 3), 1e6)).max() == 10.0  # clipped as VecNormalize clips
    loaded = normalizer_from_state(normalizer.state_dict())
    assert isinstance(loaded, RunningObservationNormalizer) and torch.equal(loaded.std, normalizer.std)


def test_online_observation_normalization_is_kept_and_applied_by_loaded_agents(tmp_path):
    summary = rltrain.train([*RUN, "algo=ppo", "algo.steps_per_env=200", "trainer.batch_size=50",
                             "env.normalize_observations=true"], run_dir=tmp_path)
    saved = load(tmp_path / "checkpoints" / "last.pt")["normalizer"]
    assert saved["count"] >= summary["env_steps"] and (saved["std"] != 1).all()  # every observation stepped to
    agent = rltrain.load_agent(tmp_path)  # the statistics are folded into its policy
    result = rltrain.evaluate(agent, episodes=2, seed=derive_seed(3, agent.step, 2))
    assert result["return_mean"] == summary["final_eval_return"]
