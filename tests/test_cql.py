"""CQLLoss and DiscreteCQLLoss: the paper's penalty and the other terms recomputed by hand, gradient
isolation (the multiplier never trains the critics), the backup variants, requested-terms-only
forwards, targets, reductions, constructor errors, state_dict round trips."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from rltrain.modules import MLP, Bounded, Categorical, NormalParamExtractor, ProbabilisticActor, ValueOperator
from rltrain.modules.qvalue import QValueActor
from rltrain.objectives.cql import CQLLoss, DiscreteCQLLoss, cql_gap
from rltrain.updaters import SoftUpdate
from tests.helpers import (
    assert_state_dict_round_trip, grads_by_group, make_actor, make_batch, make_qvalue, tanh_normal_by_hand,
    unpack_transition,
)

OBS, ACT, B, N = 3, 2, 6, 3
ALL_TERMS = frozenset({"loss_actor", "loss_actor_bc", "loss_qvalue", "loss_cql", "loss_alpha", "loss_alpha_prime"})


def cql(**kwargs) -> CQLLoss:
    torch.manual_seed(0)
    kwargs.setdefault("num_random", N)
    return CQLLoss(make_actor(OBS, ACT), make_qvalue(OBS, ACT), **kwargs)




def perturb_(tensors, scale: float = 0.3, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in tensors:
            t.add_(scale * torch.randn(t.shape, generator=g))


def q(module: ValueOperator, obs, action):
    return module.module(obs, action).squeeze(-1)


def box_tanh_normal(loc, scale, noise, low, high):
    """A TanhNormal sample on [low, high] and its log-probability, from the [-1, 1] formulas."""
    unit_action, unit_log_prob = tanh_normal_by_hand(loc, scale, noise)
    half = (high - low) / 2
    return (high + low) / 2 + half * unit_action, unit_log_prob - loc.shape[-1] * math.log(half)


# ---- CQLLoss: gradients and targets ---------------------------------------------------------------

@pytest.mark.parametrize("with_lagrange", [False, True])
def test_each_term_reaches_only_its_group(with_lagrange):
    loss = cql(with_lagrange=with_lagrange, lagrange_thresh=-5.0)
    expected = {"loss_actor": "actor", "loss_actor_bc": "actor", "loss_qvalue": "qvalue", "loss_cql": "qvalue",
                "loss_alpha": "alpha"}
    if with_lagrange:
        expected["loss_alpha_prime"] = "alpha_prime"
    assert loss.loss_groups == expected
    assert set(loss.parameter_groups) == set(expected.values())
    for term, group in expected.items():
        loss.zero_grad(set_to_none=True)
        loss(make_batch(B, OBS, ACT))[term].backward()
        touched = grads_by_group(loss)
        assert touched[group], f"{term} gave no gradient to its group {group}"
        assert not any(hit for g, hit in touched.items() if g != group), f"{term} leaked into {touched}"
        assert all(b.grad is None for n, b in loss.named_buffers() if n.startswith("target_"))


def test_sum_of_terms_trains_every_parameter_and_no_target():
    loss = cql(with_lagrange=True, lagrange_thresh=-5.0)
    out = loss(make_batch(B, OBS, ACT))
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    for name, param in loss.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert any(n.startswith("target_qvalue") for n, _ in loss.named_buffers())
    assert not any(n.startswith("target_") for n, _ in loss.named_parameters())


def test_actor_parameters_are_the_users():
    actor = make_actor(OBS, ACT)
    loss = CQLLoss(actor, make_qvalue(OBS, ACT))
    assert {id(p) for p in actor.parameters()} == {id(p) for p in loss.group_parameters("actor")}


def test_target_critics_feed_the_backup_only():
    loss = cql()
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(3)
    before = loss(batch.clone())
    frozen = [t.clone() for t in loss.target_qvalue_network.buffers()]
    perturb_(loss.qvalue_network.parameters())
    assert all(torch.equal(a, b) for a, b in zip(frozen, loss.target_qvalue_network.buffers()))
    perturb_(loss.target_qvalue_network.buffers(), seed=6)
    perturb_(loss.qvalue_network.parameters(), scale=-0.3)  # undo: the online critics as before
    torch.manual_seed(3)
    after = loss(batch.clone())
    assert not torch.allclose(after["loss_qvalue"], before["loss_qvalue"])
    torch.testing.assert_close(after["loss_cql"], before["loss_cql"])
    torch.testing.assert_close(after["loss_actor"], before["loss_actor"])


def test_delay_qvalue_false_aliases_the_critics():
    loss = cql(delay_qvalue=False)
    assert loss.target_qvalue_network is loss.qvalue_network
    with pytest.raises(RuntimeError, match="no target networks"):
        SoftUpdate(loss, tau=0.1)
    SoftUpdate(cql(), tau=0.1).step()


# ---- CQLLoss: the formulas ------------------------------------------------------------------------

@pytest.mark.parametrize("low, high", [(-1.0, 1.0), (-2.0, 3.0)])
def test_losses_match_the_paper_formulas(low, high):
    torch.manual_seed(1)
    actor = make_actor(OBS, ACT, low=low, high=high)
    q1, q2 = make_qvalue(OBS, ACT), make_qvalue(OBS, ACT)
    alpha, gamma, temp, weight, tau, alpha_prime = 0.5, 0.9, 0.7, 2.0, 0.3, 1.5
    loss = CQLLoss(actor, [q1, q2], loss_function="l2", alpha_init=alpha, temperature=temp, min_q_weight=weight,
                   num_random=N, deterministic_backup=False, with_lagrange=True, lagrange_thresh=tau)
    loss.make_value_estimator(gamma=gamma)
    with torch.no_grad():
        loss.log_alpha_prime.fill_(math.log(alpha_prime))
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(7)
    out = loss(batch.clone())

    torch.manual_seed(7)  # the documented draw order: backup, uniform, pi(.|s), pi(.|s'), actor
    noise_next, uniform = torch.randn(B, ACT), torch.rand(N, B, ACT)
    noise_current, noise_following, noise_actor = torch.randn(N, B, ACT), torch.randn(N, B, ACT), torch.randn(B, ACT)
    net = actor.module.module
    obs, act, next_obs, reward, not_term = unpack_transition(batch)

    def both(o, a):
        return torch.stack([q(q1, o, a), q(q2, o, a)])

    with torch.no_grad():
        next_action, next_log_prob = box_tanh_normal(*net(next_obs), noise_next, low, high)
        y = reward + gamma * not_term * (both(next_obs, next_action).min(0).values - alpha * next_log_prob)
        pred = both(obs, act)
        expected_q = ((pred - y) ** 2).sum(0).mean()

        # Per state b: one logsumexp over its 3N importance-corrected values, all at s_b.
        random_actions = low + (high - low) * uniform
        current, current_lp = box_tanh_normal(*net(obs), noise_current, low, high)
        following, following_lp = box_tanh_normal(*net(next_obs), noise_following, low, high)
        obs_n = obs.expand(N, B, OBS)
        corrected = torch.cat([
            both(obs_n, random_actions) + ACT * math.log(high - low),
            both(obs_n, current) - current_lp,
            both(obs_n, following) - following_lp,
        ], dim=1)  # [K, 3N, B]
        gap = temp * torch.logsumexp(corrected / temp, dim=1) - pred
        expected_cql = (alpha_prime * (weight * gap - tau).sum(0)).mean()
        expected_alpha_prime = (-alpha_prime * (weight * gap - tau).mean(0)).mean()

        new_action, log_prob = box_tanh_normal(*net(obs), noise_actor, low, high)
        expected_actor = (alpha * log_prob - both(obs, new_action).min(0).values).mean()
        loc, scale = net(obs)
        pre_tanh = torch.atanh((act - (high + low) / 2) / ((high - low) / 2))
        data_log_prob = (torch.distributions.Normal(loc, scale).log_prob(pre_tanh)
                         - torch.log(1 - torch.tanh(pre_tanh) ** 2) - math.log((high - low) / 2)).sum(-1)
        expected_bc = (alpha * log_prob - data_log_prob).mean()
        expected_alpha = (-math.log(alpha) * (log_prob - ACT)).mean()

    close = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_qvalue"], expected_q, **close)
    torch.testing.assert_close(out["loss_cql"], expected_cql, **close)
    torch.testing.assert_close(out["loss_alpha_prime"], expected_alpha_prime, **close)
    torch.testing.assert_close(out["loss_actor"], expected_actor, **close)
    torch.testing.assert_close(out["loss_actor_bc"], expected_bc, **close)
    torch.testing.assert_close(out["loss_alpha"], expected_alpha, **close)
    torch.testing.assert_close(out["alpha_prime"], torch.tensor(alpha_prime))
    torch.testing.assert_close(out["entropy"], -log_prob.mean(), **close)


def test_penalty_without_lagrange_is_weighted_sum_of_gaps():
    loss = cql(min_q_weight=3.0, temperature=2.0)
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(4)
    out = loss.forward_terms(batch, frozenset({"loss_cql"}))
    torch.manual_seed(4)
    with torch.no_grad():
        dist = loss.actor_network.distribution(batch["observation"])
        next_dist = loss.actor_network.distribution(batch["next", "observation"])
        actions, log_density = loss.sample_penalty_actions(dist, next_dist, batch["action"].shape)
        gap = loss.conservative_gap(batch, actions, log_density)
    torch.testing.assert_close(out["loss_cql"], 3.0 * gap.sum(0).mean())
    torch.testing.assert_close(batch["cql_q1_loss"], 3.0 * gap[0].unsqueeze(-1))
    torch.testing.assert_close(batch["cql_q2_loss"], 3.0 * gap[1].unsqueeze(-1))


def test_uniform_penalty_actions_fill_the_box_with_its_density():
    torch.manual_seed(0)
    loss = CQLLoss(make_actor(OBS, ACT, low=-2.0, high=3.0), make_qvalue(OBS, ACT), num_random=500)
    obs = torch.randn(B, OBS)
    with torch.no_grad():
        dist = loss.actor_network.distribution(obs)
        actions, log_density = loss.sample_penalty_actions(dist, dist, torch.Size([B, ACT]))
    assert actions.shape == (3 * 500, B, ACT) and log_density.shape == (3 * 500, B)
    uniform = actions[:500]
    assert uniform.min() >= -2.0 and uniform.max() <= 3.0
    assert uniform.min() < -1.9 and uniform.max() > 2.9
    torch.testing.assert_close(log_density[:500], torch.full((500, B), -ACT * math.log(5.0)))
    # The policy's density recomputed from an action inverts the tanh squashing, which float32 cannot do
    # precisely within ~1e-3 of the bounds: compare where that reference is well conditioned.
    policy_actions = actions[500:1000]
    squashed = (policy_actions - 0.5) / 2.5  # the box [-2, 3] mapped to [-1, 1]
    inside = (squashed.abs() < 0.999).all(-1)
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(log_density[500:1000][inside], dist.log_prob(policy_actions)[inside],
                               rtol=1e-4, atol=1e-4)


def test_conservative_gap_with_fixed_samples_is_per_state():
    torch.manual_seed(2)
    q1, q2 = make_qvalue(OBS, ACT), make_qvalue(OBS, ACT)
    loss = CQLLoss(make_actor(OBS, ACT), [q1, q2], temperature=0.5)
    batch = make_batch(B, OBS, ACT)
    g = torch.Generator().manual_seed(0)
    actions, log_density = torch.rand(4, B, ACT, generator=g) * 2 - 1, torch.randn(4, B, generator=g)
    gap = loss.conservative_gap(batch, actions, log_density)
    with torch.no_grad():
        for b in range(B):
            for k, module in enumerate((q1, q2)):
                o = batch["observation"][b].expand(4, OBS)
                values = (q(module, o, actions[:, b]) - log_density[:, b]) / 0.5
                expected = 0.5 * torch.logsumexp(values, 0) - q(module, batch["observation"][b], batch["action"][b])
                torch.testing.assert_close(gap[k, b], expected, rtol=1e-5, atol=1e-5)
    # Another state's samples leave this state's gap alone (no [B, B * N] mixing).
    moved = actions.clone()
    moved[:, 1:] = 0.0
    changed = loss.conservative_gap(batch, moved, log_density)
    torch.testing.assert_close(changed[:, 0], gap[:, 0])
    assert not torch.allclose(changed[:, 1:], gap[:, 1:])
    torch.testing.assert_close(cql_gap(torch.zeros(1, 2, 1), torch.zeros(2, 1), torch.zeros(1, 1), 1.0),
                               torch.full((1, 1), math.log(2.0)))


@pytest.mark.parametrize("max_q_backup, deterministic_backup", list(itertools.product([False, True], repeat=2)))
def test_backup_variants(max_q_backup, deterministic_backup):
    torch.manual_seed(1)
    actor = make_actor(OBS, ACT)
    q1, q2 = make_qvalue(OBS, ACT), make_qvalue(OBS, ACT)
    alpha = 0.4
    loss = CQLLoss(actor, [q1, q2], loss_function="l2", alpha_init=alpha, num_random=N, max_q_backup=max_q_backup,
                   deterministic_backup=deterministic_backup)
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(11)
    out = loss.forward_terms(batch, frozenset({"loss_qvalue"}))
    assert set(out.keys()) == {"loss_qvalue"}

    torch.manual_seed(11)
    obs, act, next_obs, reward, not_term = unpack_transition(batch)
    net = actor.module.module
    with torch.no_grad():
        if max_q_backup:  # best of N next actions per critic, then the smaller critic, no entropy term
            next_actions, _ = tanh_normal_by_hand(*net(next_obs), torch.randn(N, B, ACT))
            o = next_obs.expand(N, B, OBS)
            next_v = torch.min(q(q1, o, next_actions).max(0).values, q(q2, o, next_actions).max(0).values)
        else:
            next_action, next_log_prob = tanh_normal_by_hand(*net(next_obs), torch.randn(B, ACT))
            next_v = torch.min(q(q1, next_obs, next_action), q(q2, next_obs, next_action))
            if not deterministic_backup:
                next_v = next_v - alpha * next_log_prob
        y = reward + 0.99 * not_term * next_v
        pred = torch.stack([q(q1, obs, act), q(q2, obs, act)])
        expected = ((pred - y) ** 2).sum(0).mean()
    torch.testing.assert_close(out["loss_qvalue"], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch["td_error"], ((pred - y) ** 2).max(0).values.unsqueeze(-1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(batch["pred_q1"], pred[0].unsqueeze(-1))
    torch.testing.assert_close(batch["pred_q2"], pred[1].unsqueeze(-1))


@pytest.mark.parametrize("max_q_backup, deterministic_backup, with_lagrange",
                         list(itertools.product([False, True], repeat=3)))
def test_every_flag_combination_runs_finite(max_q_backup, deterministic_backup, with_lagrange):
    loss = cql(max_q_backup=max_q_backup, deterministic_backup=deterministic_backup, with_lagrange=with_lagrange,
               lagrange_thresh=1.0)
    out = loss(make_batch(B, OBS, ACT))
    assert ("loss_alpha_prime" in out.keys()) == with_lagrange
    total = sum(v for k, v in out.items() if k.startswith("loss_"))
    total.backward()
    assert torch.isfinite(total)
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in loss.parameters())


def test_lagrange_multiplier_moves_towards_the_threshold_and_is_clamped():
    batch = make_batch(B, OBS, ACT)
    for thresh, sign in ((-100.0, -1.0), (100.0, 1.0)):  # gap above tau: alpha' grows; below: it shrinks
        loss = cql(with_lagrange=True, lagrange_thresh=thresh)
        loss(batch.clone())["loss_alpha_prime"].backward()
        assert torch.sign(loss.log_alpha_prime.grad) == sign
    loss = cql(with_lagrange=True)
    with torch.no_grad():
        loss.log_alpha_prime.fill_(30.0)
    assert loss(batch.clone())["alpha_prime"].item() == pytest.approx(1e6)


def test_bc_term_scores_dataset_actions_on_the_bounds():
    # A TanhNormal that does not clamp (eps=0) gives atanh(+-1) = inf: the objective must clamp first.
    spec = Bounded(-1.0, 1.0, (ACT,))
    net = torch.nn.Sequential(MLP(OBS, 2 * ACT, (16,)), NormalParamExtractor())
    actor = ProbabilisticActor(TensorDictModule(net, ["observation"], ["loc", "scale"]), spec=spec,
                               distribution_kwargs={"eps": 0.0})
    loss = CQLLoss(actor, make_qvalue(OBS, ACT), num_random=N)
    batch = make_batch(B, OBS, ACT)
    batch["action"] = torch.tensor([[1.0, -1.0]]).expand(B, ACT).clone()
    out = loss.forward_terms(batch, frozenset({"loss_actor_bc"}))
    out["loss_actor_bc"].backward()
    assert torch.isfinite(out["loss_actor_bc"])
    assert all(torch.isfinite(p.grad).all() for p in loss.group_parameters("actor"))


def test_bc_gradient_flows_through_both_log_probs():
    loss = cql(alpha_init=0.3)
    batch = make_batch(B, OBS, ACT)
    net = loss.actor_network.module.module
    params = list(net.parameters())
    torch.manual_seed(8)
    out = loss.forward_terms(batch, frozenset({"loss_actor_bc"}))  # one draw: the actor's action
    got = torch.autograd.grad(out["loss_actor_bc"], params)
    torch.manual_seed(8)
    loc, scale = net(batch["observation"])
    _, log_prob = tanh_normal_by_hand(loc, scale, torch.randn(B, ACT))
    pre_tanh = torch.atanh(batch["action"])
    data_log_prob = (torch.distributions.Normal(loc, scale).log_prob(pre_tanh)
                     - torch.log(1 - batch["action"] ** 2)).sum(-1)
    expected = torch.autograd.grad((0.3 * log_prob - data_log_prob).mean(), params)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5)


def test_forward_terms_computes_only_what_is_asked():
    loss = cql(with_lagrange=True)
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(5)
    full = loss(batch.clone())
    actor_side = batch.clone()
    out = loss.forward_terms(actor_side, frozenset({"loss_actor_bc", "loss_alpha"}))
    assert set(out.keys()) == {"loss_actor_bc", "loss_alpha", "alpha", "entropy"}
    assert "pred_q1" not in actor_side.keys() and "td_error" not in actor_side.keys()
    critic_side = batch.clone()
    torch.manual_seed(5)  # the critic side draws first, so its values equal the full forward's
    out = loss.forward_terms(critic_side, frozenset({"loss_qvalue", "loss_cql", "loss_alpha_prime"}))
    assert set(out.keys()) == {"loss_qvalue", "loss_cql", "loss_alpha_prime", "alpha_prime"}
    for key in out.keys():
        torch.testing.assert_close(out[key], full[key])
    assert loss.forward_terms(batch.clone(), ALL_TERMS).keys() == full.keys()


@pytest.mark.parametrize("with_lagrange", [False, True])
def test_reductions(with_lagrange):
    batch = make_batch(B, OBS, ACT)
    outs = {}
    for reduction in ("none", "sum", "mean"):
        loss = cql(reduction=reduction, scalar_output_mode="exclude", with_lagrange=with_lagrange,
                   lagrange_thresh=0.5)
        torch.manual_seed(0)
        outs[reduction] = loss(batch.clone())
    for key in (k for k in outs["mean"].keys() if k.startswith("loss_")):
        assert outs["none"][key].shape == (B,), key
        torch.testing.assert_close(outs["sum"][key], outs["none"][key].sum())
        torch.testing.assert_close(outs["mean"][key], outs["none"][key].mean())
    assert not {"alpha", "entropy", "alpha_prime"} & set(outs["none"].keys())


def test_stacked_and_vmapped_critics_agree():
    class Critic(nn.Module):  # not a plain Sequential: stacked with vmap, not baddbmm
        def __init__(self):
            super().__init__()
            self.net = MLP(OBS + ACT, 1, (16,))

        def forward(self, obs, action):
            return self.net(obs, action)

    torch.manual_seed(0)
    critics = [ValueOperator(Critic(), in_keys=["observation", "action"]) for _ in range(2)]
    plain = [ValueOperator(c.module.net, in_keys=["observation", "action"]) for c in critics]
    batch = make_batch(B, OBS, ACT)
    outs = []
    for qvalue, vmap_off in ((plain, False), (critics, False), (critics, True)):
        torch.manual_seed(0)
        loss = CQLLoss(make_actor(OBS, ACT), qvalue, num_random=N, deactivate_vmap=vmap_off, max_q_backup=True)
        torch.manual_seed(1)
        outs.append(loss(batch.clone()))
    for out in outs[1:]:
        for key in outs[0].keys():
            torch.testing.assert_close(out[key], outs[0][key], rtol=1e-5, atol=1e-5)


def test_constructor_errors():
    actor, critic = make_actor(OBS, ACT), make_qvalue(OBS, ACT)
    with pytest.raises(ValueError, match="exactly two critics"):
        CQLLoss(actor, [critic, critic, critic])
    with pytest.raises(ValueError, match="temperature"):
        CQLLoss(actor, critic, temperature=0.0)
    with pytest.raises(ValueError, match="num_random"):
        CQLLoss(actor, critic, num_random=0)
    with pytest.raises(TypeError, match="Bounded"):
        CQLLoss(actor, critic, action_spec=Categorical(3))
    with pytest.raises(ValueError, match="finite bounds"):
        CQLLoss(actor, critic, action_spec=Bounded(-math.inf, 1.0, (ACT,)))
    with pytest.raises(TypeError, match="make_value_estimator"):
        CQLLoss(actor, critic, gamma=0.9)
    with pytest.raises(ValueError, match="reduction"):
        CQLLoss(actor, critic, reduction="median")


def test_cql_state_dict_round_trip():
    assert_state_dict_round_trip(lambda: cql(with_lagrange=True), make_batch(B, OBS, ACT))


# ---- DiscreteCQLLoss ------------------------------------------------------------------------------
NA = 4


def discrete_batch(action_space: str, seed: int = 0) -> TensorDict:
    td = make_batch(B, OBS, 1, seed=seed)
    index = torch.randint(NA, (B,), generator=torch.Generator().manual_seed(seed + 1))
    td["action"] = index if action_space == "categorical" else F.one_hot(index, NA)
    return td


def discrete_cql(action_space: str = "categorical", **kwargs) -> DiscreteCQLLoss:
    torch.manual_seed(0)
    return DiscreteCQLLoss(QValueActor(MLP(OBS, NA, (16,)), action_space=action_space), **kwargs)


@pytest.mark.parametrize("action_space", ["categorical", "one_hot"])
@pytest.mark.parametrize("loss_function", ["l2", "smooth_l1"])
def test_discrete_losses_match_the_formulas_with_the_target_network(action_space, loss_function):
    loss = discrete_cql(action_space, loss_function=loss_function)
    loss.make_value_estimator(gamma=0.8)
    perturb_(loss.target_value_network.buffers())  # target and online differ, as after some training
    batch = discrete_batch(action_space)
    out = loss(batch)

    obs, _, next_obs, reward, not_term = unpack_transition(batch)
    index = batch["action"] if action_space == "categorical" else batch["action"].argmax(-1)
    online = loss.value_network.module
    target_net = loss.target_value_network.module
    with torch.no_grad():
        y = reward + 0.8 * not_term * target_net(next_obs).max(-1).values
        values = online(obs)
        pred = values.gather(-1, index.unsqueeze(-1)).squeeze(-1)
        distance = (pred - y) ** 2 if loss_function == "l2" else F.smooth_l1_loss(pred, y, reduction="none")
    torch.testing.assert_close(out["loss_qvalue"], (0.5 * distance).mean())
    torch.testing.assert_close(out["loss_cql"], (torch.logsumexp(values, -1) - pred).mean())
    torch.testing.assert_close(out["td_error"], ((pred - y) ** 2).mean().reshape(1))
    torch.testing.assert_close(out["pred_value"], values.mean())  # Q(s, .) over every action, as the reference
    torch.testing.assert_close(out["target_value"], y.mean())
    torch.testing.assert_close(batch["td_error"], ((pred - y) ** 2).unsqueeze(-1))
    torch.testing.assert_close(batch["pred_val"], values)


def test_discrete_both_terms_train_only_the_online_network():
    loss = discrete_cql()
    assert loss.loss_groups == {"loss_qvalue": "value", "loss_cql": "value"}
    assert loss.parameter_groups == ["value"]
    for term in loss.loss_groups:
        loss.zero_grad(set_to_none=True)
        loss(discrete_batch("categorical"))[term].backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.group_parameters("value")), term
        assert not any(n.startswith("target_") for n, _ in loss.named_parameters())


def test_discrete_target_network_drives_the_backup():
    loss = discrete_cql()
    batch = discrete_batch("categorical")
    before = loss(batch.clone())
    perturb_(loss.value_network.parameters())  # the online network moves, the target does not
    moved_online = loss(batch.clone())
    torch.testing.assert_close(moved_online["target_value"], before["target_value"])
    assert not torch.allclose(moved_online["loss_qvalue"], before["loss_qvalue"])
    perturb_(loss.value_network.parameters(), scale=-0.3)  # undo; now move the target only
    perturb_(loss.target_value_network.buffers(), seed=6)
    moved_target = loss(batch.clone())
    assert not torch.allclose(moved_target["target_value"], before["target_value"])
    assert not torch.allclose(moved_target["loss_qvalue"], before["loss_qvalue"])
    torch.testing.assert_close(moved_target["loss_cql"], before["loss_cql"])

    aliased = discrete_cql(delay_value=False)
    assert aliased.target_value_network is aliased.value_network
    start = aliased(batch.clone())["target_value"]
    perturb_(aliased.value_network.parameters())
    assert not torch.allclose(aliased(batch.clone())["target_value"], start)


def test_discrete_soft_update_moves_the_target():
    loss = discrete_cql()
    updater = SoftUpdate(loss, tau=0.5)
    perturb_(loss.value_network.parameters())
    before = [t.clone() for t in loss.target_value_network.buffers()]
    updater.step()
    online = list(loss.value_network.parameters())
    for old, new, src in zip(before, loss.target_value_network.buffers(), online):
        torch.testing.assert_close(new, 0.5 * old + 0.5 * src.detach())


def test_discrete_reductions_and_no_priority_weights():
    batch = discrete_batch("one_hot")
    outs = {r: discrete_cql("one_hot", reduction=r)(batch.clone()) for r in ("none", "sum", "mean")}
    for key in ("loss_qvalue", "loss_cql"):
        assert outs["none"][key].shape == (B,)
        torch.testing.assert_close(outs["sum"][key], outs["none"][key].sum())
        torch.testing.assert_close(outs["mean"][key], outs["none"][key].mean())
    weighted = batch.clone()
    weighted["priority_weight"] = torch.rand(B)
    torch.testing.assert_close(discrete_cql("one_hot")(weighted)["loss_qvalue"], outs["mean"]["loss_qvalue"])


def test_discrete_constructor_and_keys():
    with pytest.raises(TypeError, match="make_value_estimator"):
        discrete_cql(gamma=0.9)
    with pytest.raises(ValueError, match="loss_function"):
        discrete_cql(loss_function="huber")
    loss = discrete_cql().set_keys(priority="my_priority", pred_val="q_all")
    batch = discrete_batch("categorical")
    loss(batch)
    assert {"my_priority", "q_all"} <= set(batch.keys())
    with pytest.raises(ValueError, match="unknown key 'advantage'"):
        loss.set_keys(advantage="a")


def test_discrete_state_dict_round_trip():
    assert_state_dict_round_trip(discrete_cql, discrete_batch("categorical"))
