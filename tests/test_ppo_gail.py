"""PPOLoss + GAE, GAILLoss + Discriminator + gail_reward, RolloutSource and GAILRewardModel: the formulas
recomputed by hand on tiny inputs, gradient isolation, stability at extreme logits, rollouts of real
gymnasium envs, minibatch epochs, state round-trips, and tiny PPO / GAIL+PPO loops (no learning checks)."""

from __future__ import annotations

import copy
import math

import gymnasium as gym
import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import distributions as D

from rltrain.envs import make_vector_env
from rltrain.modules import MLP, Actor, CategoricalActor, ValueOperator
from rltrain.modules.discriminator import Discriminator
from rltrain.objectives.gail import GAILLoss, gail_reward
from rltrain.objectives.ppo import ClipPPOLoss, PPOLoss, generalized_advantage_estimate
from rltrain.onpolicy import ENV_REWARD_KEY, VALID_KEY, GAILRewardModel
from rltrain.sources import RolloutSource
from tests.helpers import check_isolation, make_actor, make_value, tanh_normal_by_hand

OBS, ACT, NA, B = 3, 2, 4, 16
LOG_PROB = "action_log_prob"  # rltrain.modules.actors.default_log_prob_key() without lp aggregation


# ---- builders -----------------------------------------------------------------------------------------
def categorical_actor(obs_dim: int = OBS, num_actions: int = NA) -> CategoricalActor:
    return CategoricalActor(MLP(obs_dim, num_actions, (16,)))


def ppo(actor=None, **kwargs) -> PPOLoss:
    torch.manual_seed(0)
    actor = actor if actor is not None else make_actor(OBS, ACT)
    return PPOLoss(actor, make_value(OBS), **kwargs)


def ppo_batch(loss: PPOLoss, discrete: bool, seed: int = 0) -> TensorDict:
    """Stored actions and an 'old' log-probability off from the current one by up to +-0.6, so that
    some ratios fall outside [0.8, 1.2] and get clipped."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, OBS, generator=g)
    action = torch.randint(NA, (B,), generator=g) if discrete else torch.rand(B, ACT, generator=g) * 1.6 - 0.8
    with torch.no_grad():
        current = loss.actor_network.distribution(obs).log_prob(action)
    return TensorDict({
        "observation": obs,
        "action": action,
        LOG_PROB: current + (torch.rand(B, generator=g) * 1.2 - 0.6),
        "advantage": torch.randn(B, 1, generator=g),
        "value_target": torch.randn(B, 1, generator=g),
        "state_value": torch.randn(B, 1, generator=g),
    }, batch_size=[B])


def tanh_normal_log_prob_by_hand(loc, scale, action):
    return (D.Normal(loc, scale).log_prob(torch.atanh(action)) - torch.log(1 - action.pow(2))).sum(-1)


def critic_value(loss: PPOLoss, obs: torch.Tensor) -> torch.Tensor:
    return loss.critic_network.module(obs).squeeze(-1)


# ---- GAE ------------------------------------------------------------------------------------------------
def test_gae_matches_a_hand_computed_example_with_truncation_and_termination():
    # env 0: step 1 is truncated (bootstraps from V(s'_final) = 10, recursion cut), step 2 terminated
    # (no bootstrap: its V(s') = NaN must not leak); env 1 never ends (the last step bootstraps).
    gamma, lmbda = 0.9, 0.8
    value = torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]).unsqueeze(-1)
    next_value = torch.tensor([[2.0, 1.0], [10.0, 1.0], [float("nan"), 1.0]]).unsqueeze(-1)
    reward = torch.tensor([[1.0, 0.0], [0.5, 0.0], [2.0, 0.0]]).unsqueeze(-1)
    terminated = torch.tensor([[False, False], [False, False], [True, False]]).unsqueeze(-1)
    truncated = torch.tensor([[False, False], [True, False], [False, False]]).unsqueeze(-1)
    advantage, target = generalized_advantage_estimate(gamma, lmbda, value, next_value, reward,
                                                       terminated | truncated, terminated)
    a2 = 2.0 - 3.0                                   # terminated: r - V(s)
    a1 = 0.5 + 0.9 * 10.0 - 2.0                      # truncated: bootstraps, carries nothing from a2
    a0 = (1.0 + 0.9 * 2.0 - 1.0) + 0.9 * 0.8 * a1
    b2 = 0.9
    b1 = 0.9 + 0.72 * b2
    b0 = 0.9 + 0.72 * b1
    expected = torch.tensor([[a0, b0], [a1, b1], [a2, b2]]).unsqueeze(-1)
    torch.testing.assert_close(advantage, expected)
    torch.testing.assert_close(target, expected + value)


def test_gae_rejects_mismatched_shapes():
    x = torch.zeros(3, 2, 1)
    with pytest.raises(ValueError, match="one shape"):
        generalized_advantage_estimate(0.9, 0.9, x, x, x.squeeze(-1), x.bool(), x.bool())


def test_compute_advantage_uses_the_critic_on_both_observations():
    loss = ppo().make_value_estimator("gae", gamma=0.95, lmbda=0.9)
    g = torch.Generator().manual_seed(1)
    done = torch.tensor([[False, True], [True, False], [False, False]]).unsqueeze(-1)
    rollout = TensorDict({
        "observation": torch.randn(3, 2, OBS, generator=g),
        "next": {"observation": torch.randn(3, 2, OBS, generator=g), "reward": torch.randn(3, 2, 1, generator=g),
                 "done": done, "terminated": done & torch.tensor([True, False]).view(1, 2, 1)},
    }, batch_size=[3, 2])
    loss.compute_advantage(rollout)
    with torch.no_grad():
        v = loss.critic_network.module(rollout["observation"])
        nv = loss.critic_network.module(rollout["next", "observation"])
    adv, target = generalized_advantage_estimate(0.95, 0.9, v, nv, rollout["next", "reward"], done,
                                                 rollout["next", "terminated"])
    torch.testing.assert_close(rollout["state_value"], v)
    torch.testing.assert_close(rollout["advantage"], adv)
    torch.testing.assert_close(rollout["value_target"], target)
    assert not rollout["advantage"].requires_grad

    loss.make_value_estimator(average_gae=True)
    loss.compute_advantage(rollout)
    torch.testing.assert_close(rollout["advantage"], (adv - adv.mean()) / adv.std())


def test_value_estimator_choices():
    loss = ppo()
    with pytest.raises(ValueError, match="gae"):
        loss.make_value_estimator("vtrace")
    with pytest.raises(ValueError, match="lmbda"):
        loss.make_value_estimator("gae", lmbda=1.5)
    with pytest.raises(TypeError, match="unexpected"):
        loss.make_value_estimator("gae", shifted=True)
    assert loss.make_value_estimator("GAE", gamma=0.9, lmbda=0.5) is loss
    assert float(loss.gamma) == pytest.approx(0.9) and float(loss.lmbda) == pytest.approx(0.5)


# ---- PPO loss values --------------------------------------------------------------------------------------
def clipped_objective_by_hand(log_prob, old_log_prob, advantage, eps=0.2):
    ratio = (log_prob - old_log_prob).exp()
    gain = torch.minimum(ratio * advantage, ratio.clamp(1 - eps, 1 + eps) * advantage)
    clipped = ((ratio < 1 - eps) | (ratio > 1 + eps)).float().mean()
    return -gain.mean(), clipped, (old_log_prob - log_prob).mean()


def test_ppo_terms_tanh_normal_match_the_formulas():
    loss = ppo(samples_mc_entropy=3, entropy_coeff=0.05, critic_coeff=0.25, loss_critic_type="l2")
    batch = ppo_batch(loss, discrete=False)
    torch.manual_seed(5)
    out = loss(batch.clone())

    obs, action, old = batch["observation"], batch["action"], batch[LOG_PROB]
    loc, scale = loss.actor_network.module.module(obs)
    log_prob = tanh_normal_log_prob_by_hand(loc, scale, action)
    objective, clip_fraction, kl = clipped_objective_by_hand(log_prob, old, batch["advantage"].squeeze(-1))
    assert 0 < clip_fraction < 1, "the batch must exercise both clipped and unclipped rows"
    torch.testing.assert_close(out["loss_objective"], objective)
    torch.testing.assert_close(out["clip_fraction"], clip_fraction)
    torch.testing.assert_close(out["kl_approx"], kl)

    torch.manual_seed(5)  # the same 3 reparameterised samples per row
    noise = torch.randn(3, B, ACT)
    _, sample_log_prob = tanh_normal_by_hand(loc, scale, noise)
    entropy = -sample_log_prob.mean(0)
    torch.testing.assert_close(out["entropy"], entropy.mean(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out["loss_entropy"], -0.05 * entropy.mean(), rtol=1e-4, atol=1e-6)

    value = critic_value(loss, obs)
    torch.testing.assert_close(out["loss_critic"], 0.25 * (value - batch["value_target"].squeeze(-1)).pow(2).mean())
    assert all(not v.requires_grad for k, v in out.items() if not k.startswith("loss_"))


def test_ppo_terms_categorical_match_the_formulas():
    loss = ppo(categorical_actor(), entropy_coeff=0.1)
    batch = ppo_batch(loss, discrete=True)
    out = loss(batch.clone())
    logits = loss.actor_network.module(batch["observation"])
    log_softmax = logits.log_softmax(-1)
    log_prob = log_softmax.gather(-1, batch["action"].unsqueeze(-1)).squeeze(-1)
    objective, clip_fraction, kl = clipped_objective_by_hand(log_prob, batch[LOG_PROB], batch["advantage"].squeeze(-1))
    torch.testing.assert_close(out["loss_objective"], objective)
    torch.testing.assert_close(out["clip_fraction"], clip_fraction)
    torch.testing.assert_close(out["kl_approx"], kl)
    entropy = -(log_softmax.exp() * log_softmax).sum(-1)  # exact: Categorical has entropy()
    torch.testing.assert_close(out["entropy"], entropy.mean())
    torch.testing.assert_close(out["loss_entropy"], -0.1 * entropy.mean())
    value = critic_value(loss, batch["observation"])
    # the defaults: smooth_l1, critic_coeff 1
    torch.testing.assert_close(out["loss_critic"], F.smooth_l1_loss(value, batch["value_target"].squeeze(-1)))

    # an action stored as [B, 1] is the same action
    column = batch.clone()
    column["action"] = batch["action"].unsqueeze(-1)
    torch.testing.assert_close(loss(column)["loss_objective"], objective)


def test_ppo_normalized_advantage_value_clipping_and_reductions():
    loss = ppo(categorical_actor(), normalize_advantage=True, clip_value=0.1, loss_critic_type="l2")
    batch = ppo_batch(loss, discrete=True)
    out = loss(batch.clone())
    logits = loss.actor_network.module(batch["observation"])
    log_prob = logits.log_softmax(-1).gather(-1, batch["action"].unsqueeze(-1)).squeeze(-1)
    adv = batch["advantage"].squeeze(-1)
    objective, _, _ = clipped_objective_by_hand(log_prob, batch[LOG_PROB], (adv - adv.mean()) / adv.std())
    torch.testing.assert_close(out["loss_objective"], objective)

    value, old, target = critic_value(loss, batch["observation"]), batch["state_value"].squeeze(-1), \
        batch["value_target"].squeeze(-1)
    clipped = old + (value - old).clamp(-0.1, 0.1)
    expected = torch.maximum((value - target).pow(2), (clipped - target).pow(2))
    torch.testing.assert_close(out["loss_critic"], expected.mean())
    assert 0 < out["value_clip_fraction"] <= 1

    none = ppo(categorical_actor(), reduction="none", entropy_coeff=0.1)(batch.clone())
    total = ppo(categorical_actor(), reduction="sum", entropy_coeff=0.1)(batch.clone())
    mean = ppo(categorical_actor(), entropy_coeff=0.1)(batch.clone())
    for key in ("loss_objective", "loss_critic", "loss_entropy"):
        assert none[key].shape == (B,)
        torch.testing.assert_close(total[key], none[key].sum())
        torch.testing.assert_close(mean[key], none[key].mean())
    assert ppo(clip_value=True).clip_value == pytest.approx(0.2)


def test_ppo_without_entropy_bonus_drops_the_term():
    loss = ppo(entropy_bonus=False)
    out = loss(ppo_batch(loss, discrete=False))
    assert "loss_entropy" not in out.keys() and "entropy" not in out.keys()
    assert set(loss.loss_groups) == {"loss_objective", "loss_critic"}
    assert "loss_entropy" in PPOLoss.loss_groups  # the class default is untouched


# ---- PPO gradients and contract --------------------------------------------------------------------------
@pytest.mark.parametrize("discrete", [False, True])
def test_ppo_gradient_isolation(discrete):
    loss = ppo(categorical_actor() if discrete else None)
    check_isolation(loss, ppo_batch(loss, discrete))
    assert ClipPPOLoss is PPOLoss


def test_ppo_constructor_errors():
    critic = make_value(OBS)
    with pytest.raises(ValueError, match="stochastic actor"):
        PPOLoss(Actor(MLP(OBS, ACT, (8,))), critic)
    with pytest.raises(ValueError, match="clip_epsilon"):
        PPOLoss(make_actor(OBS, ACT), critic, clip_epsilon=1.5)
    with pytest.raises(ValueError, match="loss_critic_type"):
        PPOLoss(make_actor(OBS, ACT), critic, loss_critic_type="huber")
    with pytest.raises(ValueError, match="clip_value"):
        PPOLoss(make_actor(OBS, ACT), critic, clip_value=-1.0)
    trunk = MLP(OBS, 2 * ACT, (8,))
    actor = make_actor(OBS, ACT)
    actor.module.module[0] = trunk
    with pytest.raises(ValueError, match="share parameters"):
        PPOLoss(actor, ValueOperator(torch.nn.Sequential(trunk, torch.nn.Linear(2 * ACT, 1))))
    loss = ppo()
    batch = ppo_batch(loss, discrete=False)
    del batch["advantage"]
    with pytest.raises(KeyError, match="compute_advantage"):
        loss(batch)


# ---- Discriminator, GAIL loss and reward ------------------------------------------------------------------------
def gail_batch(batch: int = B, seed: int = 0, discrete: bool = False) -> TensorDict:
    g = torch.Generator().manual_seed(seed)

    def actions():
        return torch.randint(NA, (batch,), generator=g) if discrete else torch.rand(batch, ACT, generator=g) * 2 - 1

    return TensorDict({
        "observation": torch.randn(batch, OBS, generator=g) + 1.0, "action": actions(),
        "collector_observation": torch.randn(batch, OBS, generator=g) - 1.0, "collector_action": actions(),
    }, batch_size=[batch])


def discriminator(**kwargs) -> Discriminator:
    torch.manual_seed(0)
    kwargs.setdefault("num_cells", (16,))
    return Discriminator(OBS, ACT, **kwargs)


def test_gail_bce_matches_bce_on_probabilities():
    disc = discriminator()
    loss = GAILLoss(disc)
    batch = gail_batch()
    out = loss(batch.clone())
    expert = torch.sigmoid(disc.logits(batch["observation"], batch["action"]))
    collector = torch.sigmoid(disc.logits(batch["collector_observation"], batch["collector_action"]))
    per_row = (F.binary_cross_entropy(expert, torch.ones_like(expert), reduction="none")
               + F.binary_cross_entropy(collector, torch.zeros_like(collector), reduction="none")).squeeze(-1)
    torch.testing.assert_close(out["loss"], per_row.mean())
    assert "gp_loss" not in out.keys()
    torch.testing.assert_close(GAILLoss(disc, reduction="none")(batch.clone())["loss"], per_row)
    torch.testing.assert_close(GAILLoss(disc, reduction="sum")(batch.clone())["loss"], per_row.sum())
    # the TensorDict API writes the same logits
    td = disc(batch.select("observation", "action"))
    torch.testing.assert_close(td["d_logits"], disc.logits(batch["observation"], batch["action"]))


@pytest.mark.parametrize("bias", [100.0, -100.0])
def test_gail_loss_is_finite_at_extreme_logits(bias):
    disc = discriminator(num_cells=())
    with torch.no_grad():
        disc.net[-1].weight.zero_()
        disc.net[-1].bias.fill_(bias)
    loss = GAILLoss(disc)
    out = loss(gail_batch())
    # softplus(-z) + softplus(z) = |z| + 2 log(1 + e^-|z|): 100 at |z| = 100, for either sign
    torch.testing.assert_close(out["loss"], torch.tensor(100.0))
    out["loss"].backward()
    assert all(torch.isfinite(p.grad).all() for p in disc.parameters())


def test_gradient_penalty_matches_a_hand_recomputation_with_the_same_eta():
    disc = discriminator()
    loss = GAILLoss(disc, use_grad_penalty=True, gp_lambda=0.5)
    batch = gail_batch()
    torch.manual_seed(3)
    out = loss(batch.clone())

    torch.manual_seed(3)
    eta = torch.rand(B, 1)  # one eta per row
    obs_hat = (eta * batch["collector_observation"] + (1 - eta) * batch["observation"]).requires_grad_(True)
    act_hat = (eta * batch["collector_action"] + (1 - eta) * batch["action"]).requires_grad_(True)
    d_obs, d_act = torch.autograd.grad(disc.logits(obs_hat, act_hat).sum(), [obs_hat, act_hat])
    norm = (d_obs.pow(2).sum(-1) + d_act.pow(2).sum(-1)).sqrt()
    gp = 0.5 * (norm - 1).pow(2).mean()
    torch.testing.assert_close(out["gp_loss"], gp)
    bce = GAILLoss(disc)(batch.clone())["loss"]
    torch.testing.assert_close(out["loss"], bce + gp)
    assert not out["gp_loss"].requires_grad and out["loss"].requires_grad


def test_gradient_penalty_of_a_linear_discriminator_is_closed_form():
    # D(x) = w.x + b has gradient w everywhere: gp = lambda * (||w|| - 1)^2 whatever eta is
    disc = discriminator(num_cells=())
    loss = GAILLoss(disc, use_grad_penalty=True, gp_lambda=10.0, reduction="sum")
    batch = gail_batch()
    out = loss(batch.clone())
    w = disc.net[-1].weight.detach()
    gp = 10.0 * (w.norm() - 1).pow(2)
    torch.testing.assert_close(out["gp_loss"], gp)
    bce = GAILLoss(disc, reduction="sum")(batch.clone())["loss"]
    torch.testing.assert_close(out["loss"], bce + B * gp)  # added to every row before the reduction


@pytest.mark.parametrize("penalty", [False, True])
def test_gail_trains_only_the_discriminator(penalty):
    actor = make_actor(OBS, ACT)
    loss = GAILLoss(discriminator(), use_grad_penalty=penalty, actor_network=actor)
    check_isolation(loss, gail_batch())
    loss(gail_batch())["loss"].backward()
    assert all(p.grad is None for p in actor.parameters())
    assert {id(p) for p in loss.parameters()} == {id(p) for p in loss.discriminator_network.parameters()}


def test_discrete_discriminator_one_hot_encodes_and_penalises():
    disc = Discriminator(OBS, num_actions=NA, num_cells=(8,))
    obs = torch.randn(5, OBS)
    index = torch.tensor([0, 3, 1, 2, 3])
    logits = disc.logits(obs, index)
    torch.testing.assert_close(disc.logits(obs, index.unsqueeze(-1)), logits)
    torch.testing.assert_close(disc.logits(obs, F.one_hot(index, NA).float()), logits)
    torch.testing.assert_close(logits, disc.net(torch.cat([obs, F.one_hot(index, NA).float()], -1)))
    batch = gail_batch(discrete=True)
    batch["collector_action"] = batch["collector_action"].unsqueeze(-1)  # [B, 1] on one side only
    out = GAILLoss(disc, use_grad_penalty=True)(batch)
    assert torch.isfinite(out["loss"]) and out["gp_loss"] > 0


def test_gail_accepts_a_plain_tensordict_discriminator():
    net = MLP(OBS + ACT, 1, (8,))
    loss = GAILLoss(TensorDictModule(net, ["observation", "action"], ["d_logits"]), use_grad_penalty=True)
    batch = gail_batch()
    out = loss(batch.clone())
    expected = (F.softplus(-net(batch["observation"], batch["action"]))
                + F.softplus(net(batch["collector_observation"], batch["collector_action"]))).mean()
    torch.testing.assert_close(out["loss"] - out["gp_loss"], expected)


def test_discriminator_and_gail_argument_errors():
    with pytest.raises(ValueError, match="action_dim"):
        Discriminator(OBS)
    with pytest.raises(ValueError, match="num_actions"):
        Discriminator(OBS, 3, num_actions=NA)
    with pytest.raises(ValueError, match="one-hot"):
        Discriminator(OBS, num_actions=NA).logits(torch.zeros(2, OBS), torch.zeros(2, 1))
    with pytest.raises(ValueError, match="gp_lambda"):
        GAILLoss(discriminator(), gp_lambda=-1)
    batch = gail_batch()
    batch = batch.set("collector_observation", torch.zeros(B, OBS + 1))
    with pytest.raises(ValueError, match="one shape"):
        GAILLoss(discriminator())(batch)


def test_gail_reward_values():
    logits = torch.tensor([-3.0, -0.5, 0.0, 0.7, 4.0], dtype=torch.float64)
    naive = -torch.log(1 - torch.sigmoid(logits) + 1e-8)
    torch.testing.assert_close(gail_reward(logits), naive)
    torch.testing.assert_close(gail_reward(torch.tensor(0.0)), torch.tensor(math.log(2.0)))
    extreme = gail_reward(torch.tensor([-100.0, 100.0, 1e4]))
    assert torch.isfinite(extreme).all()
    torch.testing.assert_close(extreme, torch.tensor([0.0, -math.log(1e-8), -math.log(1e-8)]), atol=1e-6, rtol=1e-5)


# ---- GAILRewardModel --------------------------------------------------------------------------------------------
class ExpertSampler:
    """Expert pairs around obs = +1 with a seeded generator (the TransitionSampler interface)."""

    def __init__(self, discrete: bool = False, obs_dim: int = OBS, seed: int = 0):
        self.discrete, self.obs_dim = discrete, obs_dim
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, batch_size: int) -> TensorDict:
        g = self.generator
        action = (torch.randint(2, (batch_size,), generator=g) if self.discrete
                  else torch.rand(batch_size, ACT, generator=g) * 2 - 1)
        return TensorDict({"observation": torch.randn(batch_size, self.obs_dim, generator=g) + 1.0, "action": action},
                          batch_size=[batch_size])

    def state_dict(self):
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.generator.set_state(state["generator"])


def reward_model(seed: int = 0, updates: int = 1) -> GAILRewardModel:
    loss = GAILLoss(discriminator())
    return GAILRewardModel(loss, torch.optim.Adam(loss.parameters(), lr=1e-2), ExpertSampler(seed=seed),
                           updates_per_rollout=updates, batch_size=32, seed=seed)


def fake_rollout(seed: int = 0) -> TensorDict:
    g = torch.Generator().manual_seed(seed)
    valid = torch.ones(8, 4, dtype=torch.bool)
    valid[3, 1] = False
    return TensorDict({"observation": torch.randn(8, 4, OBS, generator=g) - 1.0,
                       "action": torch.rand(8, 4, ACT, generator=g) * 2 - 1,
                       "next": {"reward": torch.zeros(8, 4, 1)}, VALID_KEY: valid}, batch_size=[8, 4])


def test_reward_model_training_lowers_the_discriminator_loss():
    model = reward_model(updates=150)
    rollout = fake_rollout()
    before = model.loss(model._discriminator_batch(rollout.reshape(-1)))["loss"].item()
    after = model.train(rollout)["loss"].item()
    assert after < 0.5 * before
    reward = model.reward(rollout)
    assert reward.shape == (8, 4, 1) and (reward >= 0).all()
    expert_like = rollout.clone().set("observation", rollout["observation"] + 2.0)
    assert model.reward(expert_like).mean() > reward.mean()  # more expert-like pairs earn more


def test_reward_model_relabels_a_transition_batch_and_round_trips():
    model = reward_model()
    model.train(fake_rollout())
    flat = fake_rollout(1).reshape(-1)
    model.relabel(flat)
    logits = model.loss.discriminator_network.logits(flat["observation"], flat["action"])
    torch.testing.assert_close(flat["next", "reward"], gail_reward(logits))
    other = reward_model(seed=1)
    other.load_state_dict(copy.deepcopy(model.state_dict()))  # a checkpoint is a copy (torch.save)
    assert other.optimizer.state_dict()["state"], "the optimizer's moments travel with the model"
    torch.manual_seed(0)
    a = model.train(fake_rollout(2))["loss"]
    torch.manual_seed(0)
    b = other.train(fake_rollout(2))["loss"]
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(model.reward(flat), other.reward(flat))


# ---- RolloutSource on real envs ------------------------------------------------------------------------------------
def cartpole_source(seed: int = 0, steps: int = 16, minibatch: int = 8, max_episode_steps: int | None = None,
                    reward: GAILRewardModel | None = None, epochs: int = 2):
    torch.manual_seed(seed)
    envs = make_vector_env("CartPole-v1", 2, max_episode_steps)
    actor, critic = categorical_actor(4, 2), make_value(4)
    loss = PPOLoss(actor, critic, entropy_coeff=0.01).make_value_estimator(gamma=0.99, lmbda=0.95)
    source = RolloutSource(envs, actor, critic, loss, steps_per_env=steps, epochs=epochs, minibatch_size=minibatch,
                           device="cpu", seed=seed, reward_model=reward)
    return source, loss


def test_rollout_of_cartpole_shapes_log_probs_and_auto_reset_cells():
    source, loss = cartpole_source(max_episode_steps=5)
    assert source.updates_per_rollout == 2 * (32 // 8)
    assert source.collect() == 28  # real transitions: the 4 auto-reset cells do not count
    r = source.rollout
    assert r.batch_size == (16, 2)
    assert r["observation"].shape == (16, 2, 4) and r["action"].shape == (16, 2) and r["action"].dtype == torch.long
    for key in ("state_value", "advantage", "value_target", ("next", "reward"), ("next", "done")):
        assert r[key].shape == (16, 2, 1), key
    # time limit 5: steps 4, 10 truncate; steps 5, 11 are the auto-reset cells (invalid)
    valid = r[VALID_KEY]
    assert valid[:, 0].tolist() == valid[:, 1].tolist()
    assert not valid[[5, 11]].any() and valid.sum() == 32 - 2 * 2
    assert r["next", "truncated"][[4, 10]].all() and not r["next", "terminated"][[4, 10]].any()
    assert len(source) == 28 and source.updates_per_rollout == 2 * (28 // 8)

    with torch.no_grad():
        dist = loss.actor_network.distribution(r["observation"])
        torch.testing.assert_close(r[LOG_PROB], dist.log_prob(r["action"]))
        torch.testing.assert_close(r["state_value"], loss.critic_network.module(r["observation"]))
    # consecutive valid steps of an episode chain up: s'_t = s_{t+1}
    cont = valid[:-1] & valid[1:] & ~r["next", "done"][:-1].squeeze(-1)
    torch.testing.assert_close(r["next", "observation"][:-1][cont], r["observation"][1:][cont])
    assert (r["next", "reward"][valid] == 1.0).all()
    # the first minibatch of the first epoch: ratio 1 (up to float rounding between batch sizes)
    out = loss(source.sample(8))
    assert abs(out["kl_approx"]) < 1e-6 and out["clip_fraction"] == 0
    assert source.pop_finished_episodes() == [(5.0, 5)] * 4


def test_minibatches_cover_every_row_once_per_epoch():
    source, _ = cartpole_source(minibatch=1)
    source.collect()
    rows = {tuple(o.tolist()) for o in source._rows["observation"]}
    assert len(rows) == len(source)  # CartPole states are distinct, so they identify the rows
    for _ in range(2):  # two epochs, each a fresh permutation
        epoch = [tuple(source.sample(1)["observation"][0].tolist()) for _ in range(len(source))]
        assert sorted(epoch) == sorted(rows)
    source8, _ = cartpole_source(minibatch=8)
    source8.collect()
    per_epoch = len(source8) // 8
    seen = torch.cat([source8.sample(8)["observation"] for _ in range(per_epoch)])
    assert len({tuple(o.tolist()) for o in seen}) == per_epoch * 8  # no row twice within an epoch


def test_rollout_source_state_dict_round_trip():
    a, _ = cartpole_source(seed=0)
    a.collect()
    for _ in range(3):
        a.sample(8)
    b, _ = cartpole_source(seed=1)
    b.actor.load_state_dict(a.actor.state_dict())
    b.critic.load_state_dict(a.critic.state_dict())
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    assert (b.env_steps, b.rollouts) == (a.env_steps, 1) and len(b) == 0
    with pytest.raises(RuntimeError, match="collect"):
        b.sample(8)
    runs = []
    for source in (a, b):
        source.reset(7)
        torch.manual_seed(3)
        source.collect()
        runs.append((source.rollout, [source.sample(8) for _ in range(5)]))
    assert (runs[0][0] == runs[1][0]).all()
    assert all((x == y).all() for x, y in zip(runs[0][1], runs[1][1]))


def test_rollout_source_continuous_actions_on_pendulum():
    torch.manual_seed(0)
    envs = make_vector_env("Pendulum-v1", 2)
    actor, critic = make_actor(3, 1, low=-2.0, high=2.0), make_value(3)
    loss = PPOLoss(actor, critic)
    source = RolloutSource(envs, actor, critic, loss, steps_per_env=6, epochs=1, minibatch_size=4, seed=0)
    source.collect()
    r = source.rollout
    assert r["action"].shape == (6, 2, 1) and r["action"].abs().max() <= 2.0
    with torch.no_grad():
        torch.testing.assert_close(r[LOG_PROB], actor.distribution(r["observation"]).log_prob(r["action"]))
    assert torch.isfinite(loss(source.sample(4))["loss_objective"])


def test_rollout_source_argument_errors():
    actor, critic = categorical_actor(4, 2), make_value(4)
    loss = PPOLoss(actor, critic)
    same_step = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")],
                                         autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    with pytest.raises(ValueError, match="NEXT_STEP"):
        RolloutSource(same_step, actor, critic, loss, steps_per_env=4, epochs=1, minibatch_size=2)
    envs = make_vector_env("CartPole-v1", 2)
    with pytest.raises(ValueError, match="minibatch_size"):
        RolloutSource(envs, actor, critic, loss, steps_per_env=4, epochs=1, minibatch_size=9)
    with pytest.raises(ValueError, match="epochs"):
        RolloutSource(envs, actor, critic, loss, steps_per_env=4, epochs=0, minibatch_size=2)
    source = RolloutSource(envs, actor, critic, loss, steps_per_env=4, epochs=1, minibatch_size=2)
    with pytest.raises(RuntimeError, match="collect"):
        source.sample(2)
    source.collect()
    with pytest.raises(ValueError, match="minibatch_size"):
        source.sample(3)


# ---- tiny training loops (they run and stay finite; the integrator checks learning) ---------------------------------
def run_ppo_updates(source: RolloutSource, loss: PPOLoss, rollouts: int) -> list[TensorDict]:
    optimizers = [torch.optim.Adam(loss.group_parameters(g), lr=3e-4) for g in ("actor", "critic")]
    outputs = []
    collected = 0
    for _ in range(rollouts):
        collected += source.collect()
        for _ in range(source.updates_per_rollout):
            out = loss(source.sample(source.minibatch_size))
            for opt in optimizers:
                opt.zero_grad()
            sum(out[k] for k in loss.loss_groups).backward()
            for opt in optimizers:
                opt.step()
            outputs.append(out.detach())
    assert source.env_steps == collected
    return outputs


def test_tiny_ppo_loop_on_cartpole():
    source, loss = cartpole_source(steps=64, minibatch=32)
    outputs = run_ppo_updates(source, loss, rollouts=3)
    assert len(outputs) >= 3 * 2 * 3  # 3 rollouts x 2 epochs x at least 3 minibatches of 32 out of ~128 rows
    assert all(torch.isfinite(v).all() for out in outputs for v in out.values())
    assert 3 * 128 - 3 * 64 < source.env_steps < 3 * 128 and source.pop_finished_episodes()  # less the auto-resets


def test_tiny_gail_ppo_loop_on_cartpole():
    disc = Discriminator(4, num_actions=2, num_cells=(16,))
    gail = GAILLoss(disc, use_grad_penalty=True)
    model = GAILRewardModel(gail, torch.optim.Adam(gail.parameters(), lr=3e-4), ExpertSampler(True, obs_dim=4),
                            updates_per_rollout=2, batch_size=16)
    source, loss = cartpole_source(steps=32, minibatch=16, reward=model)
    outputs = run_ppo_updates(source, loss, rollouts=2)
    assert all(torch.isfinite(v).all() for out in outputs for v in out.values())
    r = source.rollout
    valid = r[VALID_KEY]
    assert (r[ENV_REWARD_KEY][valid] == 1.0).all()  # the true reward is kept
    torch.testing.assert_close(r["next", "reward"], model.reward(r))
    assert torch.isfinite(model.last_losses["loss"]) and "gp_loss" in model.last_losses.keys()
    state = source.state_dict()
    assert state["reward_model"]["optimizer"]["state"]
