"""Decision Transformer and Online DT: the trajectory buffer's windows, masks, returns-to-go and
timesteps against hand-computed values; the transformer's causal and padding masks; DTLoss and
OnlineDTLoss against direct re-computations of the spec's formulas; gradient isolation; the
episodic DTPolicy; FIFO capacity and exact resume; Online DT's fine-tuning source on a real
Pendulum-v1 vector env; the context-too-long error."""

from __future__ import annotations

import io
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
import torch
from tensordict.nn import InteractionType, set_interaction_type
from torch import distributions as D
from torch import nn

from rltrain.data.minari_data import OfflineData
from rltrain.data.trajectory import (
    ContextTooLongError, TrajectoryBuffer, check_context_fits, returns_to_go,
)
from rltrain.errors import ConfigError
from rltrain.evaluate import evaluate
from rltrain.modules.specs import Bounded
from rltrain.modules.transformer import DecisionTransformer, DTActor, DTPolicy, OnlineDTActor
from rltrain.objectives.decision_transformer import DTLoss, OnlineDTLoss
from rltrain.sources import FinetuneSource
from tests.helpers import check_isolation, check_sum_trains_everything, tanh_normal_by_hand

OBS, ACT, T = 2, 1, 4
# Two episodes back to back: A (3 steps) then B (5 steps). State of flat row r is [r, -r].
LENGTHS = [3, 5]
REWARDS = [1.0, 2.0, 3.0, 4.0, 0.0, 1.0, 2.0, 5.0]
# Hindsight returns-to-go: A = [6, 5, 3]; B = [12, 8, 8, 7, 5].
RTG = [6.0, 5.0, 3.0, 12.0, 8.0, 8.0, 7.0, 5.0]


def states(n: int = 8) -> torch.Tensor:
    rows = torch.arange(n, dtype=torch.float32)
    return torch.stack([rows, -rows], -1)


def actions(n: int = 8) -> torch.Tensor:
    return (0.1 * torch.arange(1, n + 1, dtype=torch.float32) - 0.45).unsqueeze(-1)


def tiny_buffer(**kwargs) -> TrajectoryBuffer:
    kwargs.setdefault("context_len", T)
    kwargs.setdefault("rtg_scale", 0.5)
    return TrajectoryBuffer(states(), actions(), torch.tensor(REWARDS), LENGTHS, **kwargs)


def tiny_offline_data(lengths=LENGTHS, rewards=REWARDS) -> OfflineData:
    """The same episodes as an OfflineData: each episode stores one observation more than steps."""
    lengths_t = torch.tensor(lengths)
    n, episodes = int(lengths_t.sum()), len(lengths)
    episode_starts = torch.cumsum(lengths_t, 0) - lengths_t
    episode_index = torch.repeat_interleave(torch.arange(episodes), lengths_t)
    obs_index = torch.arange(n) + episode_index
    observations = torch.full((n + episodes, OBS), 99.0)  # the final observations: never read as states
    observations[obs_index] = states(n)
    rewards_t = torch.tensor(rewards)
    return OfflineData(
        observations=observations, obs_index=obs_index, actions=actions(n), rewards=rewards_t,
        terminated=torch.zeros(n, dtype=torch.bool), truncated=torch.zeros(n, dtype=torch.bool),
        episode_index=episode_index, step_index=torch.arange(n) - episode_starts[episode_index],
        episode_starts=episode_starts, episode_lengths=lengths_t,
        episode_returns=torch.zeros(episodes, dtype=torch.float64).index_add_(0, episode_index, rewards_t.double()),
        observation_space=gym.spaces.Box(-np.inf, np.inf, (OBS,)), action_space=gym.spaces.Box(-1, 1, (ACT,)),
        env_spec=None, eval_env_spec=None, ref_min_score=None, ref_max_score=None, dataset_id="test/tiny-v0")


def spec(low: float = -1.0, high: float = 1.0, dim: int = ACT) -> Bounded:
    return Bounded(torch.full((dim,), low), torch.full((dim,), high))


def transformer(obs_dim: int = OBS, act_dim: int = ACT, context_len: int = T, dropout: float = 0.0,
                **kwargs) -> DecisionTransformer:
    return DecisionTransformer(obs_dim, act_dim, embed_dim=16, n_layer=2, n_head=2, dropout=dropout,
                               max_ep_len=kwargs.pop("max_ep_len", 50), context_len=context_len, **kwargs)


def dt_actor(seed: int = 0, low: float = -1.0, high: float = 1.0) -> DTActor:
    torch.manual_seed(seed)
    return DTActor(transformer(), spec(low, high))


def odt_actor(seed: int = 0, act_dim: int = ACT) -> OnlineDTActor:
    torch.manual_seed(seed)
    return OnlineDTActor(transformer(act_dim=act_dim), spec(dim=act_dim))


def padded_batch():
    """Windows ending at every row: several start padded; the buffer's batch."""
    return tiny_buffer().windows(torch.arange(8))


# ---- trajectory buffer -----------------------------------------------------------------------------
def test_windows_at_episode_starts_and_ends_by_hand():
    buffer = tiny_buffer(max_ep_len=4)
    td = buffer.windows(torch.tensor([0, 2, 3, 7]))
    assert td.batch_size == torch.Size([4, T])
    z = None  # a padded step
    expected_rows = [[z, z, z, 0], [z, 0, 1, 2], [z, z, z, 3], [4, 5, 6, 7]]
    expected_pad = torch.tensor([[r is None for r in window] for window in expected_rows])
    assert torch.equal(td["pad_mask"], expected_pad) and td["pad_mask"].dtype == torch.bool
    expected_obs = torch.tensor([[[r, -r] if r is not None else [0, 0] for r in w] for w in expected_rows],
                                dtype=torch.float32)
    assert torch.equal(td["observation"], expected_obs)
    expected_act = torch.tensor([[[0.1 * (r + 1) - 0.45] if r is not None else [0.0] for r in w]
                                 for w in expected_rows])
    torch.testing.assert_close(td["action"], expected_act)
    # Returns-to-go times rtg_scale 0.5; window 2 starts episode B: episode A's steps never leak in.
    expected_rtg = torch.tensor([[0, 0, 0, 3.0], [0, 3.0, 2.5, 1.5], [0, 0, 0, 6.0], [4.0, 4.0, 3.5, 2.5]])
    assert torch.equal(td["return_to_go"], expected_rtg.unsqueeze(-1))
    # Timesteps within the episode, clamped to max_ep_len - 1 = 3 (step 4 of episode B).
    assert torch.equal(td["timestep"], torch.tensor([[0, 0, 0, 0], [0, 0, 1, 2], [0, 0, 0, 0], [1, 2, 3, 3]]))
    assert td["timestep"].dtype == torch.long


def test_returns_to_go_per_episode():
    rtg = returns_to_go(torch.tensor(REWARDS), torch.tensor(LENGTHS))
    assert torch.equal(rtg, torch.tensor(RTG))


def test_sample_draws_end_steps_uniformly_and_matches_windows():
    buffer = tiny_buffer(seed=3)
    td = buffer.sample(4000)
    end_rows = td["observation"][:, -1, 0].long()  # the last step is never padded; its state is [r, -r]
    assert not td["pad_mask"][:, -1].any()
    counts = torch.bincount(end_rows, minlength=8).float()
    assert ((counts - 500).abs() < 100).all(), counts  # 8 steps, uniform: ~500 each
    reference = buffer.windows(end_rows)
    assert all(torch.equal(td[k], reference[k]) for k in td.keys())
    # Seeded: the same seed gives the same batch; another seed another.
    assert torch.equal(tiny_buffer(seed=3).sample(64)["observation"], tiny_buffer(seed=3).sample(64)["observation"])
    assert not torch.equal(tiny_buffer(seed=3).sample(64)["observation"],
                           tiny_buffer(seed=4).sample(64)["observation"])
    assert len(buffer) == 8


def test_from_offline_data_reads_states_not_final_observations():
    data = tiny_offline_data()
    buffer = TrajectoryBuffer.from_offline_data(data, context_len=T, rtg_scale=0.5)
    reference = tiny_buffer()
    rows = torch.arange(8)
    assert all(torch.equal(buffer.windows(rows)[k], reference.windows(rows)[k]) for k in reference.windows(rows).keys())
    assert not (buffer.sample(256)["observation"] == 99.0).any()
    data.action_space = gym.spaces.Discrete(3)
    with pytest.raises(ConfigError, match="continuous"):
        TrajectoryBuffer.from_offline_data(data, context_len=T)


def test_capacity_keeps_the_highest_return_offline_episodes_in_order():
    # Episode returns: A = 6, B = 12, C (2 steps) = 20; capacity 2 keeps B then C.
    buffer = TrajectoryBuffer(states(10), actions(10), torch.tensor(REWARDS + [10.0, 10.0]), [3, 5, 2],
                              context_len=2, rtg_scale=1.0, capacity=2)
    assert buffer.episode_lengths.tolist() == [5, 2] and len(buffer) == 7
    td = buffer.windows(torch.arange(7))
    assert td["observation"][:, -1, 0].tolist() == [3, 4, 5, 6, 7, 8, 9]
    assert td["return_to_go"][:, -1, 0].tolist() == [12, 8, 8, 7, 5, 20, 10]


def test_add_episode_fifo_and_hindsight_return_to_go():
    buffer = tiny_buffer(capacity=3, rtg_scale=1.0)
    buffer.add_episode(torch.full((2, OBS), 50.0), torch.zeros(2, ACT), torch.tensor([1.0, 3.0]))
    assert buffer.episode_lengths.tolist() == [3, 5, 2] and len(buffer) == 10
    buffer.add_episode(np.full((4, OBS), 60.0), np.zeros((4, ACT)), np.array([1.0, 2.0, 3.0, 4.0]))
    # Episode A (the oldest) dropped out; B, C, D remain, rows re-indexed from 0.
    assert buffer.episode_lengths.tolist() == [5, 2, 4] and len(buffer) == 11
    td = buffer.windows(torch.tensor([0, 5, 6, 10]))
    assert td["observation"][:, -1, 0].tolist() == [3, 50, 50, 60]
    assert td["pad_mask"].tolist()[1] == [True, True, True, False]  # C's first step: B never leaks in
    assert td["return_to_go"][:, -1, 0].tolist() == [12, 4, 3, 4]
    assert td["return_to_go"][3, :, 0].tolist() == [10, 9, 7, 4]
    assert td["timestep"][3].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="sizes"):
        buffer.add_episode(torch.zeros(2, OBS + 1), torch.zeros(2, ACT), torch.zeros(2))
    with pytest.raises(ValueError, match="disagree"):
        buffer.add_episode(torch.zeros(3, OBS), torch.zeros(2, ACT), torch.zeros(2))


def test_buffer_state_dict_round_trip_restores_online_episodes_and_generator():
    buffer = tiny_buffer(capacity=3, seed=5)
    for k in range(3):
        buffer.add_episode(torch.full((k + 2, OBS), 50.0 + k), torch.zeros(k + 2, ACT), torch.arange(k + 2.0))
    buffer.sample(7)
    saved = io.BytesIO()
    torch.save(buffer.state_dict(), saved)
    saved.seek(0)
    resumed = tiny_buffer(capacity=3, seed=0)
    resumed.load_state_dict(torch.load(saved))
    assert resumed.episode_lengths.tolist() == buffer.episode_lengths.tolist() == [2, 3, 4]
    assert resumed.online_episodes_added == 3
    a, b = buffer.sample(32), resumed.sample(32)
    assert all(torch.equal(a[k], b[k]) for k in a.keys())
    # A partly replaced buffer: offline episode B is still held next to two online ones.
    partial = tiny_buffer(capacity=3)
    partial.add_episode(torch.zeros(2, OBS), torch.zeros(2, ACT), torch.ones(2))
    partial.add_episode(torch.zeros(3, OBS), torch.zeros(3, ACT), torch.ones(3))
    again = tiny_buffer(capacity=3)
    again.load_state_dict(partial.state_dict())
    assert again.episode_lengths.tolist() == partial.episode_lengths.tolist() == [5, 2, 3]
    rows = torch.arange(len(partial))
    assert all(torch.equal(again.windows(rows)[k], partial.windows(rows)[k]) for k in ("observation", "return_to_go"))
    with pytest.raises(RuntimeError, match="freshly built"):
        again.load_state_dict(partial.state_dict())


def test_context_longer_than_every_episode_is_refused():
    with pytest.raises(ContextTooLongError, match=r"longest has 5 steps.*algo\.context_len=5"):
        tiny_buffer(context_len=6)
    assert issubclass(ContextTooLongError, ConfigError) and issubclass(ContextTooLongError, ValueError)
    with pytest.raises(ContextTooLongError, match=r"test/tiny-v0.*context length 9"):
        TrajectoryBuffer.from_offline_data(tiny_offline_data(), context_len=9)
    with pytest.raises(ContextTooLongError, match=r"chunk size 7.*algo\.chunk_size=5"):
        check_context_fits(torch.tensor(LENGTHS), 7, what="chunk size", option="algo.chunk_size")
    check_context_fits(torch.tensor(LENGTHS), 5)  # as long as the longest episode: fine
    tiny_buffer(context_len=5)


# ---- the transformer: causal and padding masks -------------------------------------------------------
def random_context(batch: int = 2, steps: int = T, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, steps, OBS, generator=g), torch.rand(batch, steps, ACT, generator=g) * 2 - 1,
            torch.randn(batch, steps, 1, generator=g), torch.arange(steps).repeat(batch, 1) + 3]


def perturbed(inputs, index: int, step: int, batch_row: slice = slice(None)):
    changed = [x.clone() for x in inputs]
    changed[index][batch_row, step] += 1.0
    return changed


def test_transformer_is_causal_and_the_state_token_does_not_see_its_action():
    torch.manual_seed(0)
    model = transformer().eval()
    inputs = random_context()
    base = model(*inputs)
    assert base.shape == (2, T, 16)
    for index, name in ((0, "state"), (1, "action"), (2, "return_to_go")):
        out = model(*perturbed(inputs, index, step=2))
        assert torch.equal(out[:, :2], base[:, :2]), f"a future {name} changed earlier outputs"
        if name == "action":  # a_2 comes after s_2: only s_3 sees it
            assert torch.equal(out[:, 2], base[:, 2])
            assert not torch.allclose(out[:, 3], base[:, 3])
        else:
            assert not torch.allclose(out[:, 2], base[:, 2])


def test_padded_steps_are_invisible_and_padded_rows_finite():
    torch.manual_seed(0)
    model = transformer().eval()
    inputs = random_context()
    pad = torch.tensor([[True, True, False, False], [False, False, False, False]])
    base = model(*inputs, pad)
    assert torch.isfinite(base).all()
    for index in range(3):
        out = model(*perturbed(inputs, index, step=1, batch_row=slice(0, 1)), pad)
        assert torch.equal(out[0, 2:], base[0, 2:]), "a padded step changed a valid output"
        unmasked = model(*perturbed(inputs, index, step=1, batch_row=slice(0, 1)))
        assert not torch.allclose(unmasked[0, 2:], model(*inputs)[0, 2:])  # without the mask it would
    # A left-padded window gives its valid steps exactly the outputs of the short window alone.
    short = model(*[x[:1, 2:] for x in inputs])
    torch.testing.assert_close(base[0, 2:], short[0])


def test_transformer_arguments_checked():
    with pytest.raises(ValueError, match="divisible"):
        DecisionTransformer(OBS, ACT, embed_dim=10, n_head=3)
    with pytest.raises(ValueError, match="context_len"):
        transformer(context_len=2)(*random_context(steps=3))
    with pytest.raises(ValueError, match="dropout"):
        DecisionTransformer(OBS, ACT, dropout=1.0)


def test_actor_heads_write_their_keys_and_respect_bounds():
    td = padded_batch()
    actor = dt_actor(low=-2.0, high=0.5)
    out = actor(td.clone())
    assert out["action"].shape == (8, T, ACT) and not torch.equal(out["action"], td["action"])
    assert (out["action"] >= -2.0).all() and (out["action"] <= 0.5).all()
    assert actor.in_keys == ["observation", "action", "return_to_go", "timestep", "pad_mask"]
    stochastic = odt_actor()
    det = stochastic(td.clone())
    assert set(stochastic.out_keys) == {"loc", "scale", "action"}
    torch.testing.assert_close(det["action"], torch.tanh(det["loc"]))  # the mode on [-1, 1]
    log_std = det["scale"].log()
    assert (log_std >= -5.0).all() and (log_std <= 2.0).all()
    with set_interaction_type(InteractionType.RANDOM):
        sampled = stochastic(td.clone())
    assert not torch.allclose(sampled["action"], det["action"])
    dist = stochastic.get_dist(td)
    assert dist.batch_shape == (8, T) and dist.event_shape == (ACT,)
    with pytest.raises(ValueError, match="action_dim"):
        DTActor(transformer(), spec(dim=2))


# ---- DTLoss ---------------------------------------------------------------------------------------------
def test_dt_loss_masks_padded_steps_against_direct_recomputation():
    td = padded_batch()
    loss = DTLoss(dt_actor())
    pred = loss.actor_network.act(td["observation"], td["action"], td["return_to_go"], td["timestep"],
                                  td["pad_mask"])
    valid = ~td["pad_mask"]
    squared = (pred - td["action"]).pow(2)[valid]          # [valid steps, A]
    torch.testing.assert_close(loss(td)["loss"], squared.mean())
    assert not torch.allclose(squared.mean(), (pred - td["action"]).pow(2).mean())  # padding would count
    torch.testing.assert_close(DTLoss(dt_actor(), reduction="sum")(td)["loss"], squared.sum())
    none = DTLoss(dt_actor(), reduction="none")(td)["loss"]
    assert none.shape == (8, T, ACT) and (none[td["pad_mask"]] == 0).all()
    torch.testing.assert_close(none[valid], squared)
    l1 = DTLoss(dt_actor(), loss_function="l1")(td)["loss"]
    torch.testing.assert_close(l1, (pred - td["action"]).abs()[valid].mean())
    # Without a pad mask every step counts.
    del td["pad_mask"]
    torch.testing.assert_close(loss(td)["loss"], (loss.actor_network.act(*loss.actor_network.inputs(td))
                                                  - td["action"]).pow(2).mean())


def test_dt_loss_keys_groups_and_isolation():
    td = padded_batch()
    loss = DTLoss(dt_actor())
    assert loss.loss_groups == {"loss": "actor"} and loss.parameter_groups == ["actor"]
    check_isolation(loss, td)
    loss(td)["loss"].backward()  # its only term ("loss", not "loss_*") trains every parameter
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())
    # The scripts' target key: the actor still reads the context's actions at "action".
    td_cat = td.clone()
    td_cat["action_cat"] = td["action"].flip(0)
    loss.set_keys(action_target="action_cat")
    pred = loss.actor_network.act(*loss.actor_network.inputs(td_cat))
    torch.testing.assert_close(loss(td_cat)["loss"], (pred - td_cat["action_cat"]).pow(2)[~td["pad_mask"]].mean())
    loss.set_keys(action_pred="prediction")
    with pytest.raises(RuntimeError, match="prediction"):
        loss(td_cat)
    with pytest.raises(ValueError, match="unknown key"):
        loss.set_keys(target="x")
    with pytest.raises(ValueError, match="loss_function"):
        DTLoss(dt_actor(), loss_function="huber")


def test_dt_loss_decreases_on_a_fixed_tiny_problem():
    buffer = tiny_buffer()
    td = buffer.windows(torch.arange(8))
    loss = DTLoss(dt_actor())
    optim = torch.optim.Adam(loss.parameters(), lr=3e-3)
    history = []
    for _ in range(150):
        value = loss(td)["loss"]
        optim.zero_grad()
        value.backward()
        optim.step()
        history.append(value.item())
    assert np.mean(history[-10:]) < 0.2 * np.mean(history[:10])


# ---- OnlineDTLoss ---------------------------------------------------------------------------------------
def test_online_dt_loss_terms_against_direct_recomputation():
    td = padded_batch()
    s = 3
    loss = OnlineDTLoss(odt_actor(), alpha_init=0.3, samples_mc_entropy=s)
    actor = loss.actor_network
    loc, scale = actor.loc_scale(*actor.inputs(td))
    target = td["action"]
    pre_tanh = torch.atanh(target)
    log_likelihood = (D.Normal(loc, scale).log_prob(pre_tanh) - torch.log(1 - target.pow(2))).sum(-1)
    torch.manual_seed(7)
    noise = torch.randn(s, *loc.shape)
    _, sample_log_prob = tanh_normal_by_hand(loc, scale, noise)
    entropy = -sample_log_prob.mean(0)
    valid = ~td["pad_mask"]
    torch.manual_seed(7)
    out = loss(td)
    torch.testing.assert_close(out["loss_log_likelihood"], -log_likelihood[valid].mean())
    torch.testing.assert_close(out["loss_entropy"], -0.3 * entropy[valid].mean())
    torch.testing.assert_close(out["loss_alpha"], 0.3 * (entropy[valid].mean() - (-ACT)))
    torch.testing.assert_close(out["alpha"], torch.tensor(0.3))
    torch.testing.assert_close(out["entropy"], entropy[valid].mean())
    assert not out["alpha"].requires_grad and not out["entropy"].requires_grad


def test_online_dt_loss_gradient_isolation():
    td = padded_batch()
    loss = OnlineDTLoss(odt_actor(), alpha_init=0.1)
    assert loss.loss_groups == {"loss_log_likelihood": "actor", "loss_entropy": "actor", "loss_alpha": "alpha"}
    check_isolation(loss, td)  # likelihood and entropy -> actor only; alpha loss -> log_alpha only
    check_sum_trains_everything(loss, td)
    fixed = OnlineDTLoss(odt_actor(), fixed_alpha=True)
    assert fixed.parameter_groups == ["actor"] and not any(p is fixed.log_alpha for p in fixed.parameters())


def test_online_dt_loss_reductions_bounds_and_target_entropy():
    td = padded_batch()
    outs = {r: OnlineDTLoss(odt_actor(), reduction=r, scalar_output_mode="exclude") for r in ("none", "sum", "mean")}
    results = {}
    for r, loss in outs.items():
        torch.manual_seed(0)
        results[r] = loss(td)
    valid = ~td["pad_mask"]
    for key in ("loss_log_likelihood", "loss_entropy", "loss_alpha"):
        none = results["none"][key]
        assert none.shape == (8, T) and (none[td["pad_mask"]] == 0).all()
        torch.testing.assert_close(results["sum"][key], none.sum())
        torch.testing.assert_close(results["mean"][key], none.sum() / valid.sum())
    assert "alpha" not in results["none"].keys()
    # Dataset actions exactly at the bounds: the log-likelihood stays finite.
    at_bounds = td.clone()
    at_bounds["action"] = torch.where(at_bounds["action"] > 0, 1.0, -1.0)
    assert torch.isfinite(OnlineDTLoss(odt_actor())(at_bounds)["loss_log_likelihood"])
    for dim in (1, 3):
        assert OnlineDTLoss(odt_actor(act_dim=dim)).target_entropy.item() == -dim
    assert OnlineDTLoss(odt_actor(), target_entropy=-0.5).target_entropy.item() == -0.5
    no_spec = odt_actor()
    no_spec.spec = None
    with pytest.raises(RuntimeError, match="spec"):
        OnlineDTLoss(no_spec)
    with pytest.raises(TypeError, match="OnlineDTActor"):
        OnlineDTLoss(dt_actor())
    with pytest.raises(ValueError, match="samples_mc_entropy"):
        OnlineDTLoss(odt_actor(), samples_mc_entropy=0)


# ---- DTPolicy ---------------------------------------------------------------------------------------------
class RecordingActor(nn.Module):
    """Stands in for a DT actor: records the windows it is given; step k returns the action 0.1 k."""

    def __init__(self):
        super().__init__()
        self.transformer = SimpleNamespace(obs_dim=OBS, action_dim=ACT)
        self.anchor = nn.Parameter(torch.zeros(1))
        self.calls: list[list[torch.Tensor]] = []

    def act(self, *inputs, deterministic=True):
        self.calls.append([x.clone() for x in inputs])
        observation = inputs[0]
        return torch.full((*observation.shape[:2], ACT), 0.1 * len(self.calls))


def test_dt_policy_keeps_left_padded_histories_and_lowers_the_return_to_go():
    actor = RecordingActor()
    policy = DTPolicy(actor, target_return=10.0, rtg_scale=0.5, context_len=3, max_ep_len=100,
                      normalizer=lambda obs: 2 * obs)
    policy.reset(2)
    obs = [torch.tensor([[k, -k], [10 + k, 0]], dtype=torch.float32) for k in range(1, 5)]
    for k, o in enumerate(obs):
        action = policy(o)
        assert action.shape == (2, ACT) and torch.allclose(action, torch.full((2, ACT), 0.1 * (k + 1)))
        policy.record(torch.tensor([1.0, 2.0]))
    first, second, last = actor.calls[0], actor.calls[1], actor.calls[3]
    observation, acts, rtg, timestep, pad = first
    assert pad.tolist() == [[True, True, False]] * 2
    assert torch.equal(observation[:, -1], 2 * obs[0]) and (observation[:, :2] == 0).all()
    assert rtg[:, :, 0].tolist() == [[0, 0, 5.0]] * 2 and timestep.tolist() == [[0, 0, 0]] * 2
    assert (acts == 0).all()  # the current step's action slot is empty
    observation, acts, rtg, timestep, pad = second
    assert pad.tolist() == [[True, False, False]] * 2
    assert rtg[:, :, 0].tolist() == [[0, 5.0, 4.5], [0, 5.0, 4.0]]
    assert torch.allclose(acts[:, :, 0], torch.tensor([[0, 0.1, 0]] * 2))
    observation, acts, rtg, timestep, pad = last  # four steps in a context of three: the first dropped
    assert not pad.any() and timestep.tolist() == [[1, 2, 3]] * 2
    assert torch.equal(observation, torch.stack([2 * obs[1], 2 * obs[2], 2 * obs[3]], 1))
    assert torch.allclose(acts[:, :, 0], torch.tensor([[0.2, 0.3, 0]] * 2))
    assert torch.allclose(rtg[:, :, 0], torch.tensor([[4.5, 4.0, 3.5], [4.0, 3.0, 2.0]]))
    policy.reset(2)
    policy(obs[0])
    assert actor.calls[-1][4].tolist() == [[True, True, False]] * 2 and actor.calls[-1][2][0, -1, 0] == 5.0
    with pytest.raises(RuntimeError, match="reset"):
        policy(torch.zeros(3, OBS))


def test_dt_policy_modes_and_the_evaluator_protocol():
    actor = odt_actor().eval()
    obs = torch.randn(2, OBS)
    mode = DTPolicy(actor, 1.0, 1e-3, T, 50, deterministic=True)
    sampling = DTPolicy(actor, 1.0, 1e-3, T, 50, deterministic=False)
    mode.reset(2)
    sampling.reset(2)
    first = mode(obs)
    mode.reset(2)
    assert torch.equal(mode(obs), first)
    assert not torch.allclose(sampling(obs), first)
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("Pendulum-v1", max_episode_steps=6)] * 2)
    torch.manual_seed(0)
    pendulum = DTPolicy(DTActor(transformer(obs_dim=3), spec(-2.0, 2.0)).eval(), 100.0, 1e-3, T, 50)
    result = evaluate(envs, pendulum, num_episodes=3, seed=0, device=torch.device("cpu"))
    assert result["episodes"] == 3 and result["length_mean"] == 6
    envs.close()


# ---- Online DT's fine-tuning source ---------------------------------------------------------------------
PENDULUM_STEPS = 12


def pendulum_source(actor: OnlineDTActor, normalizer, seed: int = 0) -> FinetuneSource:
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("Pendulum-v1", max_episode_steps=PENDULUM_STEPS)] * 2)
    g = torch.Generator().manual_seed(1)
    lengths = [PENDULUM_STEPS, PENDULUM_STEPS]
    buffer = TrajectoryBuffer(torch.randn(24, 3, generator=g), torch.rand(24, 1, generator=g) * 4 - 2,
                              -torch.rand(24, generator=g), lengths, context_len=T, rtg_scale=0.1, max_ep_len=50,
                              capacity=6, seed=seed)
    policy = DTPolicy(actor, target_return=-5.0, rtg_scale=0.1, context_len=T, max_ep_len=50,
                      normalizer=normalizer, deterministic=False)
    return FinetuneSource(buffer, envs, policy, batch_size=4, pretrain_updates=2, updates_per_episode=3,
                          episodes_per_collect=3, seed=seed, module=actor)


def draw(source: FinetuneSource):
    """One update's worth: advance (collecting when due), then a batch."""
    assert source.advance() == 1
    return source.sample()


def test_online_finetune_source_collects_whole_episodes_and_resumes_identically():
    torch.manual_seed(0)
    actor = OnlineDTActor(transformer(obs_dim=3, dropout=0.1), spec(-2.0, 2.0))
    modes = []
    actor.transformer.register_forward_pre_hook(lambda module, args: modes.append(module.training))
    normalizer = lambda obs: obs / 2  # noqa: E731
    source = pendulum_source(actor, normalizer)
    draw(source)
    draw(source)
    assert source.episodes_collected == 0 and source.env_steps == 0 and not modes
    draw(source)  # the third sample starts fine-tuning: 3 episodes on 2 envs (two rounds)
    assert source.episodes_collected == 3 and source.env_steps == 3 * PENDULUM_STEPS
    assert modes and not any(modes) and actor.training  # eval while collecting, train mode restored
    finished = source.pop_finished_episodes()
    assert len(finished) == 3 and all(length == PENDULUM_STEPS for _, length in finished)
    assert source.pop_finished_episodes() == []
    buffer = source.buffer
    assert buffer.episode_lengths.tolist() == [PENDULUM_STEPS] * 5 and len(source) == 5 * PENDULUM_STEPS
    # Hindsight return-to-go: the last episode's first step carries its whole return (times 0.1);
    # its states were normalized by the policy's normalizer.
    first_row = torch.tensor([len(buffer) - PENDULUM_STEPS])
    window = buffer.windows(first_row)
    torch.testing.assert_close(window["return_to_go"][0, -1, 0], torch.tensor(0.1 * finished[-1][0]))
    assert window["observation"][0, -1].abs().max() <= 0.5 + 1e-6  # Pendulum's cos/sin halved
    # Three more samples: the sixth collects again; FIFO keeps 6 episodes.
    state = source.state_dict()
    saved = io.BytesIO()
    torch.save(state, saved)
    continued = [draw(source) for _ in range(4)]
    assert source.episodes_collected == 6 and source.env_steps == 6 * PENDULUM_STEPS
    assert buffer.num_episodes == 6

    torch.manual_seed(123)  # the global generator must not matter
    saved.seek(0)
    resumed = pendulum_source(actor, normalizer)
    resumed.load_state_dict(torch.load(saved))
    assert resumed.env_steps == 3 * PENDULUM_STEPS and resumed.samples_drawn == 3
    again = [draw(resumed) for _ in range(4)]
    assert all(torch.equal(a[k], b[k]) for a, b in zip(continued, again) for k in a.keys())
    assert resumed.pop_finished_episodes() == source.pop_finished_episodes()


def test_online_finetune_source_arguments_checked():
    actor = odt_actor()
    source = pendulum_source(OnlineDTActor(transformer(obs_dim=3), spec(-2.0, 2.0)), None)
    source.envs.close()
    with pytest.raises(ValueError, match="deterministic=False"):
        FinetuneSource(source.buffer, source.envs, DTPolicy(actor, 1.0, 1.0, T, 50), pretrain_updates=0,
                             updates_per_episode=1)
    with pytest.raises(ValueError, match="updates_per_episode"):
        FinetuneSource(source.buffer, source.envs, source.policy, pretrain_updates=0, updates_per_episode=0)
