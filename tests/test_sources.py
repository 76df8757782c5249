"""Sources: the replay schedule's arithmetic (no envs, no Hydra), the source kinds chosen from configs,
the offline-to-online source's phases, batches and online transform, and Cal-QL's bound."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_module
from tensordict import TensorDict

from rltrain.build import build_trainer, source_kind
from rltrain.data.mc_returns import discounted_returns
from rltrain.errors import ConfigError
from rltrain.objectives import CalQLLoss, CQLLoss
from rltrain.sources import OnlineTransform, ReplaySchedule
from tests.helpers import make_actor, make_batch, make_qvalue


def due(schedule: ReplaySchedule, moves: list[tuple[int, int]], stored: int = 10**6) -> list[int]:
    return [schedule.updates_due(before, after, stored) for before, after in moves]


def steps(n: int, per_advance: int = 1, start: int = 0) -> list[tuple[int, int]]:
    return [(start + i * per_advance, start + (i + 1) * per_advance) for i in range(n)]


# ---- the replay schedule -----------------------------------------------------------------------------

def test_fractional_updates_per_step_carry_over():
    assert due(ReplaySchedule(updates_per_step=0.5), steps(6)) == [0, 1, 0, 1, 0, 1]
    assert sum(due(ReplaySchedule(updates_per_step=1 / 3), steps(30))) == 10
    assert due(ReplaySchedule(updates_per_step=2.5), steps(4)) == [2, 3, 2, 3]


def test_train_every_runs_updates_in_bursts():
    assert due(ReplaySchedule(train_every=4), steps(8)) == [0, 0, 0, 4, 0, 0, 0, 4]
    assert due(ReplaySchedule(train_every=4, updates_per_step=0.5), steps(8)) == [0, 0, 0, 2, 0, 0, 0, 2]


def test_learning_starts_and_min_rows_hold_updates_back():
    schedule = ReplaySchedule(learning_starts=3)
    assert due(schedule, steps(5)) == [0, 0, 0, 1, 1]  # owed only once more than 3 env steps were collected
    assert due(ReplaySchedule(min_rows=8), steps(3), stored=4) == [0, 0, 0]


def test_several_envs_owe_one_update_per_env_step():
    assert due(ReplaySchedule(), steps(3, per_advance=4)) == [4, 4, 4]
    # 3 envs, bursts every 4 env steps: the clock crosses 4 at 6, 8 at 9, 12 at 12
    assert due(ReplaySchedule(train_every=4), steps(4, per_advance=3)) == [0, 6, 3, 3]
    # fewer real transitions than envs (an env was being auto-reset) owe fewer updates
    assert due(ReplaySchedule(), [(0, 4), (4, 7), (7, 11)]) == [4, 3, 4]


def test_schedule_settings_are_checked():
    with pytest.raises(ValueError, match="updates_per_step"):
        ReplaySchedule(updates_per_step=0)
    with pytest.raises(ValueError, match="train_every"):
        ReplaySchedule(train_every=0)


# ---- source kinds from configs -----------------------------------------------------------------------

def compose_config(*overrides: str):
    with initialize_config_module("rltrain.configs", version_base="1.3"):
        return compose("config", overrides=list(overrides))


@pytest.mark.parametrize("overrides, kind", [
    ([], "replay"),
    (["algo=ppo"], "rollout"),
    (["algo=iql", "dataset=minari", "dataset.id=x/y/z-v0"], "dataset"),
    (["algo=online_dt", "dataset=minari", "dataset.id=x/y/z-v0"], "finetune"),
    (["algo=gail", "dataset=minari", "dataset.id=x/y/z-v0"], "rollout"),
    (["algo=gail_sac", "dataset=minari", "dataset.id=x/y/z-v0"], "replay"),
    (["algo=rlpd", "dataset=minari", "dataset.id=x/y/z-v0"], "offline_to_online"),
    (["algo=cal_ql", "dataset=minari", "dataset.id=x/y/z-v0", "source=offline_to_online"], "offline_to_online"),
])
def test_the_source_follows_the_algorithm_and_the_data(overrides, kind):
    assert source_kind(compose_config(*overrides)) == kind


@pytest.mark.parametrize("overrides, message", [
    (["algo=iql", "source=offline_to_online"], "source=offline_to_online needs a dataset"),
    (["algo=rlpd"], "source=offline_to_online needs a dataset"),
    (["algo=iql", "dataset=minari", "dataset.id=x/y/z-v0", "source=offline_to_online", "source.mix=1.5"],
     "source.mix=1.5"),
    (["algo=dt", "dataset=minari", "dataset.id=x/y/z-v0", "source=offline_to_online"], "trajectory windows"),
    (["algo=ppo", "source=replay"], "algo=ppo trains on source=rollout"),
    (["algo=sac", "source=rollout"], "source=rollout serves on-policy rollouts"),
    (["algo=iql", "dataset=minari", "dataset.id=x/y/z-v0", "source=replay"], "use source=offline_to_online"),
])
def test_a_source_that_cannot_serve_the_run_is_refused(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        source_kind(compose_config(*overrides))


# ---- offline to online --------------------------------------------------------------------------------

O2O = ["device=cpu", "logger.progress=false", "network.actor.num_cells=[32,32]", "network.critic.num_cells=[32,32]",
       "trainer.batch_size=32", "trainer.eval_episodes=2", "env.eval_num_envs=2", "trainer.eval_every=100",
       "trainer.log_every=50", "trainer.checkpoint_every=100", "trainer.warmup_steps=0", "trainer.learning_starts=0",
       "source=offline_to_online", "source.offline_updates=100", "source.online_env_steps=200", "dataset=minari"]


def test_offline_to_online_runs_both_phases_on_one_clock(tmp_path, tiny_datasets):
    cfg = compose_config(*O2O, f"dataset.id={tiny_datasets['pendulum']}", "algo=iql")
    trainer = build_trainer(cfg, tmp_path)
    source = trainer.source
    dataset_rows = len(source.dataset)
    assert len(source.online.buffer) == dataset_rows  # mix=null: the dataset is copied into the replay buffer
    summary = trainer.fit()
    assert trainer.updates == 300 and trainer.env_steps == 200 and len(source.online.buffer) == dataset_rows + 200
    rows = (tmp_path / "eval.csv").read_text().splitlines()
    header = rows[0].split(",")
    phases = [r.split(",")[header.index("phase")] for r in rows[1:]]
    clock = [int(r.split(",")[header.index("step")]) for r in rows[1:]]
    assert phases == ["offline", "online", "online"] and clock == [100, 200, 300]
    assert summary["mode"] == "offline_to_online" and summary["clock"] == "step"
    assert {"final_offline_eval_return", "final_online_eval_return", "final_offline_normalized_score",
            "final_online_normalized_score"} <= set(summary)
    assert json.loads((tmp_path / "summary.json").read_text())["final_online_eval_return"] == summary[
        "final_eval_return"]


def test_symmetric_sampling_draws_from_both_buffers_without_copying(tmp_path, tiny_datasets):
    cfg = compose_config(*O2O, f"dataset.id={tiny_datasets['pendulum']}", "algo=cal_ql", "algo.loss.num_random=2",
                         "source.mix=0.25", "source.online_env_steps=400")
    trainer = build_trainer(cfg, tmp_path)
    source = trainer.source
    assert len(source.online.buffer) == 0 and source.dataset_rows == 8
    assert source.sample()["mc_return"].shape == (32, 1)  # offline phase: all dataset rows, Cal-QL's returns
    trainer.fit()
    online = source.online.buffer
    assert len(online) <= 400 and len(online) >= 400 - 200  # whole episodes only (Pendulum: 200 steps)
    batch = source.sample()
    data_obs = source.dataset.transitions(torch.arange(len(source.dataset)))["observation"]
    stored_obs = online.sample(10_000)["observation"]

    def found_in(rows, pool):
        return [(pool == row).all(-1).any().item() for row in rows]

    assert all(found_in(batch["observation"][:8], data_obs))
    assert all(found_in(batch["observation"][8:], stored_obs))


def test_online_transform_normalizes_transforms_rewards_and_labels_whole_episodes():
    from rltrain.build import RewardAffine
    from rltrain.data.normalize import ObservationNormalizer

    normalizer = ObservationNormalizer(torch.tensor([1.0]), torch.tensor([2.0]))
    transform = OnlineTransform(normalizer, RewardAffine(10.0, -1.0), mc_return_gamma=0.5, num_envs=2)

    def step(obs, rewards, done):
        n = len(obs)
        d = torch.tensor(done).unsqueeze(-1)
        return TensorDict({"observation": torch.tensor(obs).unsqueeze(-1), "action": torch.zeros(n, 1),
                           "next": {"observation": torch.tensor(obs).unsqueeze(-1) + 1,
                                    "reward": torch.tensor(rewards).unsqueeze(-1), "terminated": d,
                                    "truncated": torch.zeros_like(d), "done": d}}, batch_size=[n])

    # env 0 ends at its 2nd step, env 1 at its 3rd; env 0 is auto-reset (no row) on the 3rd call
    assert len(transform(step([3.0, 5.0], [1.0, 0.0], [False, False]))) == 0
    out = transform(step([3.0, 5.0], [2.0, 0.0], [True, False]))
    assert out["observation"].squeeze(-1).tolist() == [1.0, 1.0]       # (3 - 1) / 2
    assert out["next", "reward"].squeeze(-1).tolist() == [9.0, 19.0]    # 10 r - 1
    assert out["mc_return"].squeeze(-1).tolist() == [9.0 + 0.5 * 19.0, 19.0]
    out = transform(step([7.0], [0.1], [True]))                          # env 1's 3rd step (env 0 resetting)
    assert out["mc_return"].squeeze(-1).tolist() == pytest.approx([-1.0 + 0.5 * (-1.0 + 0.5 * 0.0), -1.0, 0.0])
    transform.reset()
    assert len(transform(step([3.0, 5.0], [1.0, 1.0], [True, True]))) == 2


def test_discounted_returns_per_episode_bootstrap_nothing_at_the_end():
    rewards = torch.tensor([1.0, 1.0, 1.0, 2.0, 2.0])
    returns = discounted_returns(rewards, torch.tensor([0, 3]), torch.tensor([3, 2]), gamma=0.9)
    assert returns.tolist() == pytest.approx([1 + 0.9 + 0.81, 1.9, 1.0, 2 + 1.8, 2.0])


# ---- Cal-QL ----------------------------------------------------------------------------------------------

def cal_ql_pair(**kwargs):
    torch.manual_seed(0)
    actor, qvalue = make_actor(3, 2), make_qvalue(3, 2)
    cql = CQLLoss(actor, qvalue, num_random=3, **kwargs)
    cal = CalQLLoss(actor, qvalue, num_random=3, **kwargs)
    cal.load_state_dict(cql.state_dict())
    return cql, cal


def test_cal_ql_equals_cql_when_the_bound_never_binds_and_raises_the_penalty_when_it_does():
    cql, cal = cal_ql_pair()
    batch = make_batch(16, 3, 2)
    batch["mc_return"] = torch.full((16, 1), -1e9)
    torch.manual_seed(1)
    expected = cql(batch.clone())
    torch.manual_seed(1)
    got = cal(batch.clone())
    torch.testing.assert_close(got["loss_cql"], expected["loss_cql"])
    torch.testing.assert_close(got["loss_qvalue"], expected["loss_qvalue"])
    assert got["bound_rate"] == 0.0
    batch["mc_return"] = torch.full((16, 1), 50.0)
    torch.manual_seed(1)
    bounded = cal(batch.clone())
    assert bounded["bound_rate"] == 1.0 and bounded["loss_cql"] > expected["loss_cql"]
    # the bound is data: no gradient flows through the bounded policy samples
    cal.zero_grad()
    bounded["loss_cql"].backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in cal.parameters())


def test_cal_ql_names_the_missing_monte_carlo_return():
    _, cal = cal_ql_pair()
    with pytest.raises(KeyError, match="mc_return"):
        cal(make_batch(4, 3, 2))


def test_config_yaml_records_the_mode_and_the_env_the_run_used(tmp_path, tiny_datasets):
    from rltrain.build import build_run

    cfg = compose_config(*O2O[:5], "algo=discrete_iql", "dataset=minari", f"dataset.id={tiny_datasets['cartpole']}")
    assert cfg.env.id == "Pendulum-v1" and cfg.source.kind == "auto"  # the defaults before the dataset is read
    _, used = build_run(cfg, tmp_path)
    assert used.env.id == "CartPole-v1" and used.source.kind == "dataset"


# ---- episodes in flight (a stop between checkpoints) ------------------------------------------------------

def pendulum_collector(num_envs: int = 2):
    from rltrain.collect import Collector
    from rltrain.exploration import OrnsteinUhlenbeckNoise
    from rltrain.modules.specs import Bounded

    envs = gym.vector.SyncVectorEnv([lambda: gym.make("Pendulum-v1") for _ in range(num_envs)])
    noise = OrnsteinUhlenbeckNoise(Bounded(low=-2.0, high=2.0, shape=(1,)), num_envs)
    return Collector(envs, lambda obs: 2 * torch.tanh(obs[:, :1]), torch.device("cpu"), seed=3, exploration=noise)


def test_a_collector_rebuilds_its_episodes_in_flight_from_seed_and_actions():
    """Mid-episode (OU noise has state, some envs auto-resetting): a fresh collector loading the state
    continues with exactly the transitions the original produces."""
    original = pendulum_collector()
    for i in range(230):  # Pendulum's episodes end at 200 steps: both envs are in their second episode
        original.step(random=i < 20, env_step=i)
    state = original.state_dict()
    assert state["actions"].shape == (230, 2, 1) and state["exploration"]["state"].abs().sum() > 0

    def continue_from(collector):
        torch.manual_seed(0)
        return torch.cat([collector.step(env_step=230 + i) for i in range(30)])

    expected = continue_from(original)
    restored = pendulum_collector()
    assert restored.load_state_dict(state, fallback_seed=99)
    assert (continue_from(restored) == expected).all()
    assert len(restored.state_dict()["actions"]) == 260  # a second stop replays from the same restart


class UnseededEnv(gym.Env):
    """Starts each episode at a point drawn without the reset seed (not reproducible by replay)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._x = np.random.default_rng().uniform(-1, 1, size=1).astype(np.float32)
        return self._x, {}

    def step(self, action):
        self._x = np.clip(self._x + 0.1 * action, -1, 1).astype(np.float32)
        return self._x, 0.0, False, False, {}


def test_an_env_that_does_not_replay_restarts_fresh_with_a_warning():
    from rltrain.collect import Collector

    def collector():
        envs = gym.vector.SyncVectorEnv([UnseededEnv])
        return Collector(envs, lambda obs: torch.ones(len(obs), 1), torch.device("cpu"), seed=0)

    original = collector()
    for _ in range(5):
        original.step()
    restored = collector()
    with pytest.warns(RuntimeWarning, match="did not reproduce their state from seed 0 and 5 replayed steps"):
        assert not restored.load_state_dict(original.state_dict(), fallback_seed=42)
    assert restored.state_dict()["restart_seed"] == 42 and restored.state_dict()["actions"] is None


def test_the_online_transform_keeps_held_back_episodes_across_a_checkpoint():
    transform = OnlineTransform(None, None, mc_return_gamma=0.5, num_envs=2)

    def step(rewards, done):
        d = torch.tensor(done).unsqueeze(-1)
        n = len(rewards)
        return TensorDict({"observation": torch.zeros(n, 1), "action": torch.zeros(n, 1),
                           "next": {"observation": torch.zeros(n, 1), "reward": torch.tensor(rewards).unsqueeze(-1),
                                    "terminated": d, "truncated": torch.zeros_like(d), "done": d}}, batch_size=[n])

    assert len(transform(step([1.0, 2.0], [False, False]))) == 0
    restored = OnlineTransform(None, None, mc_return_gamma=0.5, num_envs=2)
    restored.load_state_dict(transform.state_dict())
    for t in (transform, restored):
        out = t(step([4.0, 8.0], [True, False]))
        assert out["mc_return"].squeeze(-1).tolist() == [1.0 + 0.5 * 4.0, 4.0]
    assert restored.state_dict()["resetting"].tolist() == [True, False]
