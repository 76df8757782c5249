"""SACLoss: gradient isolation, targets, the spec's formulas recomputed by hand, keys, reductions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rltrain.objectives import SACLoss, get_objective
from rltrain.updaters import SoftUpdate
from tests.helpers import (
    assert_state_dict_round_trip, check_reductions, grads_by_group, make_actor, make_batch, make_qvalue,
    make_value, tanh_normal_by_hand, unpack_transition,
)

OBS, ACT, B = 3, 2, 12


def sac(version: int = 2, **kwargs) -> SACLoss:
    torch.manual_seed(0)
    value = make_value(OBS) if version == 1 else None
    return SACLoss(make_actor(OBS, ACT), make_qvalue(OBS, ACT), value, **kwargs)




def test_registry_names_sac():
    assert get_objective("sac") is SACLoss
    with pytest.raises(KeyError, match="registered"):
        get_objective("nope")


@pytest.mark.parametrize("version", [1, 2])
def test_each_term_reaches_only_its_group(version):
    loss = sac(version, delay_actor=True)
    expected_groups = {"loss_actor": "actor", "loss_qvalue": "qvalue", "loss_alpha": "alpha"}
    if version == 1:
        expected_groups["loss_value"] = "value"
    assert loss.loss_groups == expected_groups
    for term, group in expected_groups.items():
        loss.zero_grad(set_to_none=True)
        out = loss(make_batch(B, OBS, ACT))
        out[term].backward()
        touched = grads_by_group(loss)
        assert touched[group], f"{term} gave no gradient to its group {group}"
        assert not any(hit for g, hit in touched.items() if g != group), f"{term} leaked into {touched}"


@pytest.mark.parametrize("version", [1, 2])
def test_sum_of_terms_trains_every_parameter_and_no_target(version):
    loss = sac(version, delay_actor=True)
    out = loss(make_batch(B, OBS, ACT))
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    for name, param in loss.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    targets = [n for n, _ in loss.named_buffers() if n.startswith("target_")]
    assert targets, "expected target copies"
    assert not any(n.startswith("target_") for n, _ in loss.named_parameters())
    assert all(not b.requires_grad and b.grad is None for n, b in loss.named_buffers() if n.startswith("target_"))


def test_actor_parameters_are_the_users():
    actor = make_actor(OBS, ACT)
    loss = SACLoss(actor, make_qvalue(OBS, ACT))
    assert {id(p) for p in actor.parameters()} == {id(p) for p in loss.group_parameters("actor")}


def test_delay_qvalue_false_targets_track_online():
    loss = sac(delay_qvalue=False)
    assert loss.target_qvalue_network is loss.qvalue_network
    with pytest.raises(RuntimeError, match="no target networks"):
        SoftUpdate(loss, tau=0.1)


def test_delayed_targets_do_not_move_with_online():
    loss = sac(delay_qvalue=True)
    before = [t.clone() for t in loss.target_qvalue_network.buffers()]
    with torch.no_grad():
        for p in loss.qvalue_network.parameters():
            p.add_(1.0)
    after = list(loss.target_qvalue_network.buffers())
    assert all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("dim", [1, 2, 6])
def test_target_entropy_auto_is_minus_action_dim(dim):
    loss = SACLoss(make_actor(OBS, dim), make_qvalue(OBS, dim))
    assert loss.target_entropy.item() == -dim
    explicit = SACLoss(make_actor(OBS, dim), make_qvalue(OBS, dim), target_entropy=-0.25)
    assert explicit.target_entropy.item() == -0.25


def test_v2_losses_match_the_spec_formulas():
    torch.manual_seed(1)
    actor = make_actor(OBS, ACT)
    q1, q2 = make_qvalue(OBS, ACT), make_qvalue(OBS, ACT)
    loss = SACLoss(actor, [q1, q2], loss_function="l2", alpha_init=0.5)
    loss.make_value_estimator(gamma=0.9)
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(7)
    out = loss(batch.clone())

    torch.manual_seed(7)
    noise_next, noise = torch.randn(B, ACT), torch.randn(B, ACT)
    net, alpha, gamma = actor.module.module, 0.5, 0.9
    obs, act, next_obs, reward, not_term = unpack_transition(batch)

    def q(module, o, a):
        return module.module(o, a).squeeze(-1)

    with torch.no_grad():
        next_action, next_log_prob = tanh_normal_by_hand(*net(next_obs), noise_next)
        next_v = torch.min(q(q1, next_obs, next_action), q(q2, next_obs, next_action)) - alpha * next_log_prob
        y = reward + gamma * not_term * next_v
        expected_q = ((q(q1, obs, act) - y) ** 2 + (q(q2, obs, act) - y) ** 2).mean()
        new_action, log_prob = tanh_normal_by_hand(*net(obs), noise)
        expected_actor = (alpha * log_prob - torch.min(q(q1, obs, new_action), q(q2, obs, new_action))).mean()
        expected_alpha = (-math.log(alpha) * (log_prob - ACT)).mean()

    torch.testing.assert_close(out["loss_qvalue"], expected_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_actor"], expected_actor, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_alpha"], expected_alpha, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["alpha"], torch.tensor(alpha))
    torch.testing.assert_close(out["entropy"], -log_prob.mean(), rtol=1e-5, atol=1e-5)


def test_v1_losses_match_the_spec_formulas():
    torch.manual_seed(2)
    actor = make_actor(OBS, ACT)
    q1, q2 = make_qvalue(OBS, ACT), make_qvalue(OBS, ACT)
    value = make_value(OBS)
    loss = SACLoss(actor, [q1, q2], value, loss_function="l2", alpha_init=0.3)
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(3)
    out = loss(batch.clone())

    torch.manual_seed(3)
    noise_value, noise_actor = torch.randn(B, ACT), torch.randn(B, ACT)
    net, alpha, gamma = actor.module.module, 0.3, 0.99
    obs, act, next_obs, reward, not_term = unpack_transition(batch)
    with torch.no_grad():
        y = reward + gamma * not_term * value.module(next_obs).squeeze(-1)
        half = B // 2
        pred = torch.cat([q1.module(obs[:half], act[:half]), q2.module(obs[half:], act[half:])]).squeeze(-1)
        expected_q = ((pred - y) ** 2).mean()
        a, lp = tanh_normal_by_hand(*net(obs), noise_value)
        v_target = torch.min(q1.module(obs, a), q2.module(obs, a)).squeeze(-1) - alpha * lp
        expected_value = ((value.module(obs).squeeze(-1) - v_target) ** 2).mean()
        new_action, log_prob = tanh_normal_by_hand(*net(obs), noise_actor)
        expected_actor = (alpha * log_prob - torch.min(q1.module(obs, new_action), q2.module(obs, new_action))
                          .squeeze(-1)).mean()
    torch.testing.assert_close(out["loss_actor"], expected_actor, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_qvalue"], expected_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_value"], expected_value, rtol=1e-5, atol=1e-5)


def test_v1_needs_batch_divisible_by_ensemble():
    loss = sac(1, num_qvalue_nets=2)
    with pytest.raises(RuntimeError, match="not divisible"):
        loss(make_batch(5, OBS, ACT))


def test_truncated_bootstraps_terminated_does_not():
    loss = sac(loss_function="l2")
    batch = make_batch(B, OBS, ACT, terminated_every=10**6)
    batch["next", "terminated"][:] = False
    batch["next", "truncated"][:] = True
    torch.manual_seed(0)
    truncated = loss(batch.clone())["loss_qvalue"]
    batch["next", "done"][:] = False
    batch["next", "truncated"][:] = False
    torch.manual_seed(0)
    running = loss(batch.clone())["loss_qvalue"]
    batch["next", "terminated"][:] = True
    torch.manual_seed(0)
    terminal = loss(batch.clone())["loss_qvalue"]
    assert torch.equal(truncated, running)
    assert not torch.allclose(terminal, running)


@pytest.mark.parametrize("version", [1, 2])
def test_reductions(version):
    check_reductions(lambda **kwargs: sac(version, **kwargs), make_batch(B, OBS, ACT))


def test_priority_weights_weight_the_mean():
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(0)
    per_sample = sac(reduction="none", scalar_output_mode="exclude")(batch.clone())["loss_qvalue"]
    weight = torch.rand(B)
    batch["priority_weight"] = weight
    torch.manual_seed(0)
    weighted = sac()(batch.clone())["loss_qvalue"]
    torch.testing.assert_close(weighted, (weight * per_sample).sum() / weight.sum())


def test_priority_is_written_and_inputs_kept():
    batch = make_batch(B, OBS, ACT)
    before = batch.clone()
    sac()(batch)
    assert batch["td_error"].shape == (B, 1) and (batch["td_error"] >= 0).all()
    for key in before.keys(include_nested=True, leaves_only=True):
        assert torch.equal(before[key], batch[key]), key


def test_set_keys():
    loss = sac()
    with pytest.raises(ValueError, match="unknown key 'not_a_key'"):
        loss.set_keys(not_a_key="x")
    loss.set_keys(priority="my_priority")
    batch = make_batch(B, OBS, ACT)
    loss(batch)
    assert "my_priority" in batch.keys()
    loss.set_keys(priority=None)
    assert loss.tensor_keys.priority == "td_error"


def test_alpha_bounds_and_fixed_alpha():
    loss = sac(alpha_init=1.0, min_alpha=0.2, max_alpha=0.5)
    out = loss(make_batch(B, OBS, ACT))
    assert out["alpha"].item() == pytest.approx(0.5)
    with torch.no_grad():
        loss.log_alpha.fill_(math.log(0.01))
    assert loss(make_batch(B, OBS, ACT))["alpha"].item() == pytest.approx(0.2)
    fixed = sac(alpha_init=0.1, fixed_alpha=True)
    assert "alpha" not in fixed.parameter_groups
    assert all(p is not fixed.log_alpha for p in fixed.parameters())
    with pytest.raises(ValueError, match="max_alpha"):
        sac(max_alpha=0)


def test_deprecated_constructor_arguments_raise():
    with pytest.raises(TypeError, match="make_value_estimator"):
        sac(gamma=0.9)
    with pytest.raises(ValueError, match="value estimators"):
        sac().make_value_estimator("gae")


def test_skip_done_states_tolerates_nan_next_observations():
    batch = make_batch(B, OBS, ACT)
    terminated = batch["next", "terminated"].squeeze(-1)
    batch["next", "observation"][terminated] = float("nan")
    out = sac(skip_done_states=True)(batch)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_state_dict_round_trip():
    assert_state_dict_round_trip(sac, make_batch(B, OBS, ACT))


def test_smooth_l1_is_the_default_distance():
    loss = sac()
    assert loss.loss_function == "smooth_l1"
    x, y = torch.tensor([0.0, 3.0]), torch.tensor([0.5, 0.0])
    torch.testing.assert_close(loss._distance(x, y), F.smooth_l1_loss(x, y, reduction="none"))
