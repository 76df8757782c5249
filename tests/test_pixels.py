"""Pixel observations: Atari/MinAtar pipelines, convolutional encoders, the storage-once replay
(frame stacks rebuilt by index, n-step returns) and their input errors."""

from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict import TensorDict

from rltrain.collect import Collector
from rltrain.data import ReplayBuffer
from rltrain.envs import check_env_id, env_specs, make_env, make_vector_env
from rltrain.errors import ConfigError
from rltrain.modules.cnn import build_encoder, choose_encoder
from rltrain.modules.specs import Bounded

ATARI = dict(noop_max=30, frame_skip=4, screen_size=84, frame_stack=4, fire_reset=False, episodic_life=True,
             clip_rewards=True)


# ---- a small real env with frames: each frame encodes (episode, step) ------------------------------------

class FrameEnv(gym.Env):
    """uint8 frames [2, 3] filled with ``16 * episode + step``; episodes of 2-6 steps, ended by
    termination or (every third episode) truncation."""

    observation_space = gym.spaces.Box(0, 255, (2, 3), dtype=np.uint8)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.episode = getattr(self, "episode", -1) + 1
        self.step_count, self.length = 0, int(self.np_random.integers(2, 7))
        return self._frame(), {}

    def _frame(self):
        return np.full((2, 3), (16 * self.episode + self.step_count) % 256, dtype=np.uint8)

    def step(self, action):
        self.step_count += 1
        end = self.step_count >= self.length
        truncated = end and self.episode % 3 == 2
        return self._frame(), float(self.step_count), end and not truncated, truncated, {}


def frame_stack_envs(num_envs: int, stack: int) -> gym.vector.VectorEnv:
    return gym.vector.SyncVectorEnv([lambda: gym.wrappers.FrameStackObservation(FrameEnv(), stack)] * num_envs,
                                    autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)


def collect(envs, steps: int) -> TensorDict:
    collector = Collector(envs, lambda obs: torch.zeros(obs.shape[0], dtype=torch.long), torch.device("cpu"), seed=0)
    return torch.cat([collector.step(random=i % 3 == 0) for i in range(steps)])


def rows_as_bytes(data: TensorDict) -> list[bytes]:
    keys = sorted(data.keys(include_nested=True, leaves_only=True), key=str)
    return [b"|".join(data[i].get(k).numpy().tobytes() for k in keys) for i in range(len(data))]


# ---- replay: storage once ---------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["state vectors", "frames"])
def test_storage_once_replay_gives_back_exactly_the_collected_transitions(kind):
    if kind == "frames":
        envs, stack = frame_stack_envs(3, 4), 4
    else:
        envs, stack = make_vector_env("CartPole-v1", 3), 1
    collected = collect(envs, 150)
    buffer = ReplayBuffer(capacity=10_000, frame_stack=stack, seed=0)
    for start in range(0, len(collected), 7):  # uneven batches, streams interleaved
        buffer.extend(collected[start:start + 7])
    assert len(buffer) == len(collected)
    # in order, exactly the collector's transitions (stacks padded at episode starts, final observations kept)
    ordered = buffer.transitions_in_order()
    assert rows_as_bytes(ordered) == rows_as_bytes(collected)
    assert ordered["observation"].dtype == collected["observation"].dtype
    # sampling draws only those, and all of them
    sampled = set(rows_as_bytes(buffer.sample(5000)))
    assert sampled == set(rows_as_bytes(collected))
    # each observation once: one row per transition plus one per episode (its final observation)
    episodes_ended = int(collected["next", "done"].sum())
    assert len(collected) + episodes_ended <= buffer._rows_written <= len(collected) + episodes_ended + envs.num_envs


def test_ring_keeps_the_newest_transitions_with_their_stacks():
    collected = collect(frame_stack_envs(2, 3), 200)
    buffer = ReplayBuffer(capacity=60, frame_stack=3, seed=1, reserve=20)
    buffer.extend(collected)
    newest = set(rows_as_bytes(collected[-60:]))
    sampled = set(rows_as_bytes(buffer.sample(4000)))
    assert sampled <= newest and len(sampled) >= 40  # the oldest few lose their stack history
    assert buffer.wrapped


def test_frame_stack_reconstruction_at_episode_start_and_end():
    buffer = ReplayBuffer(capacity=100, frame_stack=3)
    buffer.extend(collect(frame_stack_envs(1, 3), 12))
    data = buffer.transitions_in_order()
    first = data[0]
    f0 = first["observation"][0]
    assert torch.equal(first["observation"], f0.expand(3, 2, 3))  # padded with the reset frame
    assert torch.equal(first["next", "observation"][:2], f0.expand(2, 2, 3))
    assert not torch.equal(first["next", "observation"][2], f0)
    end = int(torch.nonzero(data["next", "done"].squeeze(-1))[0])
    final = data[end]["next", "observation"]
    assert int(final[-1, 0, 0]) % 16 == int(final[-2, 0, 0]) % 16 + 1  # the real final frame, after its history
    assert torch.equal(data[end + 1]["observation"], data[end + 1]["observation"][0].expand(3, 2, 3))


def test_frame_storage_dtype_and_layout_on_a_small_capacity():
    buffer = ReplayBuffer(capacity=50, frame_stack=4, seed=0)
    buffer.extend(collect(frame_stack_envs(2, 4), 10))
    frames = buffer._storage[("observation",)]
    assert frames.dtype == torch.uint8 and tuple(frames.shape) == (buffer.rows, 2, 3)  # single frames
    assert ("next", "observation") not in buffer._storage
    batch = buffer.sample(8)
    assert batch["observation"].dtype == torch.uint8 and tuple(batch["observation"].shape) == (8, 4, 2, 3)
    assert batch["next", "observation"].shape == batch["observation"].shape


def test_resume_is_exact_with_unfinished_episodes():
    collected = collect(frame_stack_envs(2, 3), 80)
    a = ReplayBuffer(capacity=40, frame_stack=3, seed=5, n_step=3)
    a.extend(collected[:50])
    a.sample(8)
    b = ReplayBuffer(capacity=40, frame_stack=3, seed=7, n_step=3)
    b.load_state_dict(a.state_dict())
    a.extend(collected[50:])
    b.extend(collected[50:])
    assert rows_as_bytes(a.sample(64)) == rows_as_bytes(b.sample(64))


# ---- replay: n-step returns --------------------------------------------------------------------------------

def hand_worked_episodes() -> TensorDict:
    """A: 0 -> 1 -> 2 truncated; B: 10 -> 11 -> 12 -> 13 terminated; C: 20 -> 21 (unfinished)."""
    rows = [  # obs, next obs, reward, terminated, truncated
        (0, 1, 1.0, False, False), (1, 2, 2.0, False, True),
        (10, 11, 3.0, False, False), (11, 12, 4.0, False, False), (12, 13, 5.0, True, False),
        (20, 21, 6.0, False, False),
    ]
    obs, nxt, rew, term, trunc = (torch.tensor(c) for c in zip(*rows))
    return TensorDict({"observation": obs.float().unsqueeze(-1), "action": torch.zeros(len(rows), dtype=torch.long),
                       "next": {"observation": nxt.float().unsqueeze(-1), "reward": rew.float().unsqueeze(-1),
                                "terminated": term.unsqueeze(-1), "truncated": trunc.unsqueeze(-1),
                                "done": (term | trunc).unsqueeze(-1)}}, batch_size=[len(rows)])


def test_n_step_targets_match_a_hand_worked_example_with_a_truncation_inside_the_window():
    buffer = ReplayBuffer(capacity=20, n_step=3, gamma=0.5, seed=0)
    buffer.extend(hand_worked_episodes())
    expected = {  # obs: (n-step reward, next obs, steps, terminated, truncated)
        0: (1 + 0.5 * 2, 2, 2, False, True),   # stops at the truncation, bootstraps from the final obs 2
        1: (2.0, 2, 1, False, True),
        10: (3 + 0.5 * 4 + 0.25 * 5, 13, 3, True, False),
        11: (4 + 0.5 * 5, 13, 2, True, False),
        12: (5.0, 13, 1, True, False),
        20: (6.0, 21, 1, False, False),        # collection has not gone further yet
    }
    batch = buffer.sample(600)
    seen = set()
    for i in range(len(batch)):
        obs = int(batch["observation"][i])
        reward, next_obs, steps, terminated, truncated = expected[obs]
        assert batch["next", "reward"][i].item() == pytest.approx(reward)
        assert int(batch["next", "observation"][i]) == next_obs
        assert int(batch["steps_to_next_obs"][i]) == steps
        assert bool(batch["next", "terminated"][i]) == terminated and bool(batch["next", "truncated"][i]) == truncated
        seen.add(obs)
    assert seen == set(expected)


def test_one_step_batches_keep_the_collectors_keys():
    buffer = ReplayBuffer(capacity=20)
    buffer.extend(hand_worked_episodes())
    assert "steps_to_next_obs" not in buffer.sample(4).keys()


# ---- environments ------------------------------------------------------------------------------------------

def reference_atari(env_id: str) -> gym.Env:
    """gymnasium's own wrappers: the pipeline rltrain's evaluation env must equal (fire reset off)."""
    env = gym.make(env_id, frameskip=1)
    env = gym.wrappers.AtariPreprocessing(env, noop_max=30, frame_skip=4, screen_size=84, grayscale_obs=True)
    return gym.wrappers.FrameStackObservation(env, 4)


def test_atari_preprocessing_equals_gymnasiums_wrappers_on_a_recorded_action_sequence():
    actions = np.random.default_rng(0).integers(0, 4, size=300)
    ours, ref = make_env("ALE/Breakout-v5", atari=ATARI, training=False), reference_atari("ALE/Breakout-v5")
    train = make_env("ALE/Breakout-v5", atari=ATARI, training=True)
    (a, _), (b, _), (c, _) = ours.reset(seed=3), ref.reset(seed=3), train.reset(seed=3)
    assert a.dtype == np.uint8 and a.shape == (4, 84, 84)
    assert np.array_equal(a, b) and np.array_equal(a, c)
    lives = ref.unwrapped.ale.lives()
    for action in actions:
        a, ra, ta, _, _ = ours.step(action)
        b, rb, tb, _, _ = ref.step(action)
        c, rc, tc, _, _ = train.step(action)
        assert np.array_equal(a, b) and ra == rb and ta == tb
        assert np.array_equal(c, b) and rc == np.sign(rb)  # training: clipped reward, same frames
        lost_life = ref.unwrapped.ale.lives() < lives
        lives = ref.unwrapped.ale.lives()
        assert tc == (tb or lost_life)  # training: a lost life ends the learner's episode
        if tc:
            break
    assert tc, "the recorded actions should lose a life within 300 steps"


def test_minatar_observations_are_uint8_channels_first():
    envs = make_vector_env("MinAtar/Breakout-v1", 2)
    obs, _ = envs.reset(seed=0)
    obs_spec, action_spec = env_specs(envs)
    assert obs.dtype == np.uint8 and obs.shape == (2, 4, 10, 10) and set(np.unique(obs)) <= {0, 1}
    assert obs_spec.shape == (4, 10, 10) and action_spec.n == 3
    batch = collect(envs, 5)
    assert batch["observation"].dtype == torch.uint8 and batch["next", "observation"].dtype == torch.uint8


def test_async_vectorization_steps_like_sync():
    def run(kind):
        envs = make_vector_env("CartPole-v1", 2, vectorization=kind)
        obs, _ = envs.reset(seed=0)
        trace = [obs]
        for _ in range(30):
            trace.append(envs.step(np.array([0, 1]))[0])
        envs.close()
        return np.stack(trace)

    assert np.array_equal(run("sync"), run("async"))
    with pytest.raises(ConfigError, match="env.vectorization must be one of"):
        make_vector_env("CartPole-v1", 2, vectorization="threads")


# ---- encoders -----------------------------------------------------------------------------------------------

def image_spec(shape, high):
    return Bounded(np.zeros(shape), np.full(shape, high), shape)


def test_encoders_are_chosen_from_the_observation_space_and_scale_uint8_inside():
    nature, dim = build_encoder(image_spec((4, 84, 84), 255.0))
    assert dim == 512 and type(nature).__name__ == "NatureCNN"
    frames = torch.randint(0, 256, (3, 4, 84, 84), dtype=torch.uint8)
    scale, body = nature[0], torch.nn.Sequential(*list(nature)[1:])
    torch.testing.assert_close(scale(frames), frames.float() / 255.0)
    torch.testing.assert_close(nature(frames), body(frames.float() / 255.0))
    minatar, dim = build_encoder(image_spec((4, 10, 10), 1.0))
    assert dim == 128 and minatar(torch.ones(2, 4, 10, 10, dtype=torch.uint8)).shape == (2, 128)
    impala, dim = build_encoder(image_spec((4, 84, 84), 255.0), "impala")
    assert impala(frames).shape == (3, dim)
    assert choose_encoder(Bounded(-np.ones(3), np.ones(3))) == "mlp"


# ---- bad input ----------------------------------------------------------------------------------------------

def test_cnn_forced_on_vectors_and_mlp_forced_on_images_are_refused():
    with pytest.raises(ConfigError, match=r"network.encoder=nature is a convolutional encoder .* vectors of shape \[3\]"):
        choose_encoder(Bounded(-np.ones(3), np.ones(3)), "nature")
    with pytest.raises(ConfigError, match=r"network.encoder=mlp needs flat observations.*\[4, 84, 84\]"):
        choose_encoder(image_spec((4, 84, 84), 255.0), "mlp")
    with pytest.raises(ConfigError, match="network.encoder=nature needs images of at least 36x36"):
        choose_encoder(image_spec((4, 10, 10), 1.0), "nature")
    with pytest.raises(ConfigError, match="unknown network.encoder 'resnet'"):
        choose_encoder(image_spec((4, 10, 10), 1.0), "resnet")


def test_unknown_ale_id_names_close_matches():
    with pytest.raises(ConfigError, match=r"unknown environment id 'ALE/Breakot-v5'. Did you mean: ALE/Breakout-v5"):
        check_env_id("ALE/Breakot-v5")


def test_missing_atari_extra_gives_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ale_py", None)  # makes `import ale_py` fail as if not installed
    with pytest.raises(ConfigError, match=r'pip install "rltrain\[atari\]"'):
        check_env_id("ALE/Pong-v5")
    monkeypatch.setitem(sys.modules, "minatar.gym", None)
    with pytest.raises(ConfigError, match=r'pip install "rltrain\[minatar\]"'):
        check_env_id("MinAtar/Breakout-v1")


def test_frame_stack_larger_than_the_replay_can_serve_is_refused():
    with pytest.raises(ValueError, match="cannot serve stacks of 8 frames"):
        ReplayBuffer(capacity=4, frame_stack=8, reserve=0)
    buffer = ReplayBuffer(capacity=50, frame_stack=4)
    with pytest.raises(ValueError, match=r"frame_stack=4 needs observations \[n, 4, ...\]"):
        buffer.extend(collect(frame_stack_envs(1, 2), 3))


def test_heads_on_a_shared_encoder_train_it_once():
    from rltrain.modules import MLP
    from rltrain.modules.cnn import EncodedHead
    encoder, dim = build_encoder(image_spec((4, 10, 10), 1.0))
    actor, critic = EncodedHead(encoder, MLP(dim, 3, [])), EncodedHead(encoder, MLP(dim, 1, []))
    assert actor.encoder is critic.encoder and len(actor) == 2
    shared = {id(p) for p in actor.parameters()} & {id(p) for p in critic.parameters()}
    assert shared == {id(p) for p in encoder.parameters()}
    assert actor(torch.zeros(5, 4, 10, 10, dtype=torch.uint8)).shape == (5, 3)


# ---- episodes that depend on their seed alone (exact resume restarts envs with seeds) -------------------

def _frames_after_reset(env: gym.Env, seed: int, actions: list[int]) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    frames = [obs]
    for action in actions:
        obs, _, terminated, truncated, _ = env.step(action)
        frames.append(obs)
        if terminated or truncated:
            break
    return frames


def test_a_seeded_reset_after_a_lost_life_starts_a_new_atari_game():
    actions = [int(a) for a in np.random.default_rng(0).integers(0, 4, 40)]
    fresh = _frames_after_reset(make_env("ALE/Breakout-v5", atari=ATARI, training=True), 3, actions)
    played = make_env("ALE/Breakout-v5", atari=ATARI, training=True)
    played.reset(seed=1)
    for _ in range(5000):  # until episodic life ends the learner's episode (a life lost, the game goes on)
        _, _, terminated, truncated, _ = played.step(played.action_space.sample())
        if terminated or truncated:
            break
    assert terminated and played.unwrapped.ale.lives() > 0, "no life was lost with the game still running"
    again = _frames_after_reset(played, 3, actions)
    assert len(again) == len(fresh) and all(np.array_equal(a, b) for a, b in zip(again, fresh))


def test_a_minatar_episode_does_not_inherit_the_previous_sticky_action():
    """With sticky_action_prob=1 every step repeats the remembered action: a game that started with the
    previous episode's (right) would move the paddle, a fresh one (no-op) does not."""
    actions = [int(a) for a in np.random.default_rng(0).integers(0, 3, 40)]
    fresh = _frames_after_reset(make_env("MinAtar/Breakout-v1", sticky_action_prob=1.0), 3, actions)
    played = make_env("MinAtar/Breakout-v1", sticky_action_prob=1.0)
    played.reset(seed=1)
    played.unwrapped.game.last_action = 3  # "right", as an earlier episode may leave it
    again = _frames_after_reset(played, 3, actions)
    assert len(again) == len(fresh) and all(np.array_equal(a, b) for a, b in zip(again, fresh))


def test_a_trained_minatar_agent_acts_on_frames_and_reproduces_its_evaluation(tmp_path):
    import csv

    import rltrain
    from rltrain.envs import derive_seed

    rltrain.train(["experiment=dqn_minatar", "torch_threads=1", "logger.progress=false", "trainer.total_env_steps=400",
                   "trainer.warmup_steps=100", "trainer.learning_starts=100", "trainer.eval_every=400",
                   "trainer.eval_episodes=3", "env.eval_num_envs=3"], run_dir=tmp_path)
    agent = rltrain.load_agent(tmp_path)
    assert agent.act(np.zeros((4, 10, 10), dtype=np.uint8)).shape == ()
    assert agent.act(torch.zeros(5, 4, 10, 10, dtype=torch.uint8)).shape == (5,)
    with pytest.raises(ValueError, match=r"shape \[4, 10, 10\] or \[n, 4, 10, 10\]"):
        agent.act(np.zeros((4, 10), dtype=np.uint8))
    with (tmp_path / "eval.csv").open(newline="") as f:
        last = list(csv.DictReader(f))[-1]
    again = rltrain.evaluate(agent, episodes=3, seed=derive_seed(0, int(last["env_step"]), 2))
    assert again["return_mean"] == pytest.approx(float(last["return_mean"]))
    assert again["length_mean"] == pytest.approx(float(last["length_mean"]))
