"""REDQLoss, CrossQLoss and Batch Renormalization: formulas recomputed by hand, gradient isolation,
targets (REDQ) and their absence (CrossQ), the stacked BRN critic against separate critics."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from rltrain.modules import ValueOperator
from rltrain.modules.batchrenorm import BatchRenorm1d, BRNMLP, StackedBRNMLP
from rltrain.modules.ensemble import fresh_copies
from rltrain.objectives.crossq import CrossQLoss
from rltrain.objectives.redq import REDQLoss
from rltrain.updaters import SoftUpdate
from tests.helpers import (
    LinearQNet, check_isolation, check_reductions, check_sum_trains_everything, make_actor, make_batch, make_qvalue,
    tanh_normal_by_hand, unpack_transition,
)

OBS, ACT, B = 3, 2, 12


# ---- shared helpers ----------------------------------------------------------------------------


def check_set_keys(loss) -> None:
    with pytest.raises(ValueError, match="unknown key 'not_a_key'"):
        loss.set_keys(not_a_key="x")
    loss.set_keys(priority="my_priority")
    batch = make_batch(B, OBS, ACT)
    loss(batch)
    assert batch["my_priority"].shape == (B, 1) and (batch["my_priority"] >= 0).all()
    loss.set_keys(priority=None)
    assert loss.tensor_keys.priority == "td_error"


# ---- Batch Renormalization -------------------------------------------------------------------------
def test_batch_renorm_is_batch_norm_during_warmup():
    torch.manual_seed(0)
    brn = BatchRenorm1d(4, momentum=0.01, eps=1e-3, warmup_steps=3)
    bn = nn.BatchNorm1d(4, momentum=0.01, eps=1e-3)
    with torch.no_grad():
        for layer in (brn, bn):
            layer.weight.copy_(torch.tensor([0.5, 1.0, 2.0, -1.0]))
            layer.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 1.0]))
    weights = torch.randn(8, 4)
    for _ in range(3):
        x = torch.randn(8, 4) * 3 + 1
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1, y2 = brn(x1), bn(x2)
        (y1 * weights).sum().backward()
        (y2 * weights).sum().backward()
        torch.testing.assert_close(y1, y2)
        torch.testing.assert_close(x1.grad, x2.grad)
        torch.testing.assert_close(brn.running_mean, bn.running_mean)
        torch.testing.assert_close(brn.running_var, bn.running_var)
    torch.testing.assert_close(brn.weight.grad, bn.weight.grad)
    torch.testing.assert_close(brn.bias.grad, bn.bias.grad)
    brn.eval(), bn.eval()
    x = torch.randn(5, 4)
    torch.testing.assert_close(brn(x), bn(x))


def test_batch_renorm_after_warmup_applies_clipped_corrections():
    torch.manual_seed(0)
    brn = BatchRenorm1d(4, warmup_steps=1, r_max=3.0, d_max=5.0)
    brn(torch.randn(6, 4))  # the one warm-up step
    running_mean = torch.tensor([0.0, 100.0, -100.0, 0.2])
    running_var = torch.tensor([1e-4, 1.0, 1.0, 400.0])  # tiny var -> r = r_max, huge var -> r = 1 / r_max
    with torch.no_grad():
        brn.running_mean.copy_(running_mean)
        brn.running_var.copy_(running_var)
        brn.weight.copy_(torch.tensor([0.5, 1.0, 2.0, -1.0]))
        brn.bias.copy_(torch.tensor([0.1, 0.0, -0.3, 1.0]))
    x = (torch.randn(10, 4) * 2 + 0.5).requires_grad_()
    y = brn(x)

    eps = brn.eps
    mean, var = x.mean(0), x.var(0, unbiased=False)
    std, running_std = (var + eps).sqrt(), (running_var + eps).sqrt()
    r = (std / running_std).clamp(1 / 3.0, 3.0).detach()
    d = ((mean - running_mean) / running_std).clamp(-5.0, 5.0).detach()
    assert r[0] == 3.0 and r[3] == pytest.approx(1 / 3.0) and d[1] == -5.0 and d[2] == 5.0
    expected = brn.weight * ((x - mean) / std * r + d) + brn.bias
    torch.testing.assert_close(y, expected)
    grad_out = torch.randn(10, 4)
    (grad_y,) = torch.autograd.grad(y, x, grad_out)
    (grad_expected,) = torch.autograd.grad(expected, x, grad_out)
    torch.testing.assert_close(grad_y, grad_expected)  # r and d are constants for the gradient


def test_batch_renorm_running_statistics_use_momentum():
    brn = BatchRenorm1d(3)  # momentum 0.01
    x = torch.randn(7, 3) * 2 + 1
    brn(x)
    torch.testing.assert_close(brn.running_mean, 0.01 * x.mean(0))
    torch.testing.assert_close(brn.running_var, 0.99 + 0.01 * x.var(0, unbiased=True))
    assert brn.num_batches_tracked.item() == 1
    before = [brn.running_mean.clone(), brn.running_var.clone()]
    brn.eval()
    torch.testing.assert_close(brn(x), brn.weight * (x - before[0]) / (before[1] + brn.eps).sqrt() + brn.bias)
    assert torch.equal(brn.running_mean, before[0]) and brn.num_batches_tracked.item() == 1


def test_batch_renorm_rejects_bad_settings():
    for kwargs, match in [({"momentum": 0.0}, "momentum"), ({"eps": 0.0}, "eps"), ({"warmup_steps": -1}, "warmup"),
                          ({"r_max": 0.5}, "r_max"), ({"d_max": -1.0}, "d_max")]:
        with pytest.raises(ValueError, match=match):
            BatchRenorm1d(3, **kwargs)
    with pytest.raises(ValueError, match="more than one row"):
        BatchRenorm1d(3)(torch.randn(1, 3))


def brn_members(k: int = 3, warmup_steps: int = 2) -> list[BRNMLP]:
    torch.manual_seed(0)
    members = fresh_copies(BRNMLP(OBS + ACT, 1, (8, 8), warmup_steps=warmup_steps), k)
    with torch.no_grad():  # non-trivial affine parameters, so that a mix-up between members shows
        for member in members:
            for layer in member:
                if isinstance(layer, BatchRenorm1d):
                    layer.weight.uniform_(0.5, 1.5)
                    layer.bias.uniform_(-0.5, 0.5)
    return members


def assert_stacked_grads_match(stacked: StackedBRNMLP, members: list[nn.Module]) -> None:
    linears = [[m for m in member if isinstance(m, nn.Linear)] for member in members]
    norms = [[m for m in member if isinstance(m, BatchRenorm1d)] for member in members]
    for k in range(len(members)):
        for i, lin in enumerate(linears[k]):
            torch.testing.assert_close(getattr(stacked, f"weight_{i}").grad[k], lin.weight.grad.t())
            torch.testing.assert_close(getattr(stacked, f"bias_{i}").grad[k, 0], lin.bias.grad)
        for j, norm in enumerate(norms[k]):
            torch.testing.assert_close(getattr(stacked, f"norm_weight_{j}").grad[k, 0], norm.weight.grad)
            torch.testing.assert_close(getattr(stacked, f"norm_bias_{j}").grad[k, 0], norm.bias.grad)


def test_stacked_brn_critic_equals_separate_critics():
    members = brn_members()
    references = copy.deepcopy(members)
    stacked = StackedBRNMLP(members)
    for step in range(4):  # warm-up (2 steps), then renormalization
        obs, act = torch.randn(6, OBS), torch.randn(6, ACT)
        out = stacked(obs, act)
        assert out.shape == (3, 6, 1)
        stacked.zero_grad()
        out.sum().backward()
        for k, ref in enumerate(references):
            ref.zero_grad()
            ref_out = ref(obs, act)
            ref_out.sum().backward()
            torch.testing.assert_close(out[k], ref_out)
        assert_stacked_grads_match(stacked, references)
    for k, ref in enumerate(references):
        norms = [m for m in ref if isinstance(m, BatchRenorm1d)]
        for j, norm in enumerate(norms):
            torch.testing.assert_close(getattr(stacked, f"running_mean_{j}")[k, 0], norm.running_mean)
            torch.testing.assert_close(getattr(stacked, f"running_var_{j}")[k, 0], norm.running_var)
            assert getattr(stacked, f"num_batches_tracked_{j}")[k].item() == norm.num_batches_tracked.item() == 4

    # eval mode (running statistics), by the module mode or by the explicit flag; per-member inputs
    obs, act = torch.randn(5, OBS), torch.randn(5, ACT)
    flagged = stacked(obs, act, batch_stats=False)
    stacked.eval()
    per_member = torch.randn(3, 5, OBS + ACT)
    per_member_out = stacked(per_member, per_member=True)
    for k, ref in enumerate(references):
        ref.eval()
        torch.testing.assert_close(flagged[k], ref(obs, act))
        torch.testing.assert_close(per_member_out[k], ref(per_member[k]))
    assert getattr(stacked, "num_batches_tracked_0")[0].item() == 4


def test_stacked_brn_critic_detach_sends_gradient_only_to_the_input():
    stacked = StackedBRNMLP(brn_members())
    action = torch.randn(6, ACT, requires_grad=True)
    stacked(torch.randn(6, OBS), action, detach=True, batch_stats=False).sum().backward()
    assert action.grad is not None and action.grad.abs().sum() > 0
    assert all(p.grad is None for p in stacked.parameters())


def test_stacked_brn_critic_accepts_batch_norm_and_rejects_other_layers():
    torch.manual_seed(0)
    bn_critic = nn.Sequential(nn.BatchNorm1d(4), nn.Linear(4, 8), nn.ReLU(), nn.BatchNorm1d(8), nn.Linear(8, 1))
    reference = copy.deepcopy(bn_critic)
    stacked = StackedBRNMLP([bn_critic])
    x = torch.randn(6, 4)
    for _ in range(3):
        torch.testing.assert_close(stacked(x)[0], reference(x))
    with pytest.raises(TypeError, match="cannot stack critic layer"):
        StackedBRNMLP([nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.1), nn.Linear(8, 1))])
    with pytest.raises(TypeError, match="cannot stack critic layer"):
        StackedBRNMLP([nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 1))])
    with pytest.raises(ValueError, match="share one architecture"):
        StackedBRNMLP([BRNMLP(4, 1, (8,)), BRNMLP(4, 1, (6,))])
    with pytest.raises(ValueError, match="norm settings"):
        StackedBRNMLP([BRNMLP(4, 1, (8,)), BRNMLP(4, 1, (8,), momentum=0.1)])


# ---- REDQ ------------------------------------------------------------------------------------------
def redq(**kwargs) -> REDQLoss:
    torch.manual_seed(0)
    kwargs.setdefault("num_qvalue_nets", 4)
    return REDQLoss(make_actor(OBS, ACT), make_qvalue(OBS, ACT), **kwargs)


def test_redq_each_term_reaches_only_its_group():
    loss = redq()
    assert loss.loss_groups == {"loss_actor": "actor", "loss_qvalue": "qvalue", "loss_alpha": "alpha"}
    check_isolation(loss, make_batch(B, OBS, ACT))


def test_redq_sum_of_terms_trains_every_parameter_and_no_target():
    loss = redq()
    check_sum_trains_everything(loss, make_batch(B, OBS, ACT))
    assert any(n.startswith("target_") for n, _ in loss.named_buffers())
    assert not any(n.startswith("target_") for n, _ in loss.named_parameters())


def test_redq_targets_delayed_or_aliased():
    loss = redq(delay_qvalue=True)
    before = [t.clone() for t in loss.target_qvalue_network.buffers()]
    with torch.no_grad():
        for p in loss.qvalue_network.parameters():
            p.add_(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, loss.target_qvalue_network.buffers()))
    SoftUpdate(loss, tau=0.5).step()
    online, target = loss.qvalue_network.parameters(), loss.target_qvalue_network.buffers()
    assert all(torch.equal(a, b) for a, b in zip(online, target))
    aliased = redq(delay_qvalue=False)
    assert aliased.target_qvalue_network is aliased.qvalue_network
    with pytest.raises(RuntimeError, match="no target networks"):
        SoftUpdate(aliased, tau=0.1)


def test_redq_losses_match_the_spec_formulas():
    torch.manual_seed(1)
    actor = make_actor(OBS, ACT)
    critics = [make_qvalue(OBS, ACT) for _ in range(4)]
    loss = REDQLoss(actor, critics, sub_sample_len=2, loss_function="l2", alpha_init=0.5)
    loss.make_value_estimator(gamma=0.9)
    batch = make_batch(B, OBS, ACT)
    written = batch.clone()
    torch.manual_seed(7)
    out = loss(written)

    torch.manual_seed(7)
    subset = torch.randperm(4)[:2].sort().values
    noise_next, noise = torch.randn(B, ACT), torch.randn(B, ACT)
    net, alpha, gamma = actor.module.module, 0.5, 0.9
    obs, act, next_obs, reward, not_term = unpack_transition(batch)

    def q_all(o, a):
        return torch.stack([c.module(o, a).squeeze(-1) for c in critics])

    with torch.no_grad():
        next_action, next_log_prob = tanh_normal_by_hand(*net(next_obs), noise_next)
        next_q = q_all(next_obs, next_action)
        next_value = next_q[subset].min(0).values - alpha * next_log_prob
        y = reward + gamma * not_term * next_value
        pred = q_all(obs, act)
        new_action, log_prob = tanh_normal_by_hand(*net(obs), noise)
        q_actor = q_all(obs, new_action)
        log_prob_all = torch.stack([log_prob, next_log_prob])

    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["next.state_value"], next_value, **tol)
    torch.testing.assert_close(out["target_value"], y, **tol)
    torch.testing.assert_close(out["loss_qvalue"], ((pred - y) ** 2).mean(), **tol)
    torch.testing.assert_close(out["loss_actor"], (alpha * log_prob - q_actor).mean(), **tol)
    torch.testing.assert_close(out["loss_alpha"], (-alpha * (log_prob_all - ACT)).mean(), **tol)
    torch.testing.assert_close(out["entropy"], -log_prob_all.mean(), **tol)
    torch.testing.assert_close(out["alpha"], torch.tensor(alpha))
    torch.testing.assert_close(out["state_action_value_actor"], q_actor, **tol)
    torch.testing.assert_close(out["action_log_prob_actor"], log_prob, **tol)
    torch.testing.assert_close(written["td_error"], (pred - y).pow(2).max(0).values.unsqueeze(-1), **tol)
    # the min runs over the subset only: over all four critics the target would differ
    assert not torch.allclose(next_q.min(0).values - alpha * next_log_prob, next_value)


def test_redq_critic_only_terms_skip_the_policy_pass_and_match_the_full_forward():
    loss = redq(num_qvalue_nets=5)
    calls = []
    loss.qvalue_network.register_forward_hook(lambda module, args, kwargs, output: calls.append(kwargs),
                                              with_kwargs=True)
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(3)
    full = loss(batch.clone())
    assert len(calls) == 2  # critic loss, actor loss
    calls.clear()
    torch.manual_seed(3)
    critic_only = loss.forward_terms(batch.clone(), frozenset({"loss_qvalue"}))
    assert len(calls) == 1 and not calls[0].get("detach", False)
    assert "loss_actor" not in critic_only.keys() and "loss_alpha" not in critic_only.keys()
    for key in ("loss_qvalue", "target_value", "next.state_value"):
        torch.testing.assert_close(critic_only[key], full[key], rtol=0, atol=0)
    torch.manual_seed(3)
    alpha_only = loss.forward_terms(batch.clone(), frozenset({"loss_qvalue", "loss_alpha"}))
    torch.testing.assert_close(alpha_only["loss_alpha"], full["loss_alpha"], rtol=0, atol=0)
    assert "loss_actor" not in alpha_only.keys()
    alpha_only["loss_qvalue"].backward()
    assert all(p.grad is None for p in loss.actor_network.parameters())
    assert all(p.grad is not None for p in loss.qvalue_network.parameters())


def test_redq_draws_a_fresh_subset_each_call_and_evaluates_only_it():
    loss = redq(num_qvalue_nets=5, sub_sample_len=2)
    seen: list[torch.Tensor] = []

    def record(module, args, kwargs, output):
        seen.append(kwargs["members"])
        assert output.shape[0] == 2

    loss.target_qvalue_network.register_forward_hook(record, with_kwargs=True)
    batch = make_batch(B, OBS, ACT)
    for _ in range(12):
        loss(batch.clone())
    assert len(seen) == 12
    for subset in seen:
        assert subset.shape == (2,) and subset[0] < subset[1] and 0 <= subset.min() and subset.max() < 5
    assert len({tuple(s.tolist()) for s in seen}) > 1


def test_redq_any_critic_module_with_or_without_vmap():
    batch = make_batch(B, OBS, ACT)
    outs = []
    for deactivate_vmap in (False, True):
        torch.manual_seed(0)
        loss = REDQLoss(make_actor(OBS, ACT), ValueOperator(LinearQNet(OBS, ACT), in_keys=["observation", "action"]),
                        num_qvalue_nets=3, deactivate_vmap=deactivate_vmap)
        torch.manual_seed(1)
        outs.append(loss(batch.clone()))
    for key in outs[0].keys():
        torch.testing.assert_close(outs[0][key], outs[1][key])


@pytest.mark.parametrize("kwargs, match", [
    ({"num_qvalue_nets": 4, "sub_sample_len": 4}, "sub_sample_len"),
    ({"num_qvalue_nets": 4, "sub_sample_len": 5}, "sub_sample_len"),
    ({"num_qvalue_nets": 4, "sub_sample_len": 0}, "sub_sample_len"),
    ({"num_qvalue_nets": 1, "sub_sample_len": 1}, "at least 2"),
    ({"gSDE": True}, "gSDE"),
    ({"max_alpha": 0.0}, "max_alpha"),
    ({"min_alpha": 2.0, "max_alpha": 1.0}, "min_alpha"),
    ({"loss_function": "huber"}, "loss_function"),
    ({"scalar_output_mode": "non_tensor"}, "scalar_output_mode"),
])
def test_redq_constructor_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        redq(**kwargs)


def test_redq_deprecated_arguments_raise():
    with pytest.raises(TypeError, match="make_value_estimator"):
        redq(gamma=0.9)
    with pytest.raises(TypeError, match="set_keys"):
        redq(priority_key="p")


def test_redq_alpha_is_clamped_straight_through():
    loss = redq(min_alpha=0.1, max_alpha=10.0)
    with torch.no_grad():
        loss.log_alpha.fill_(math.log(20.0))
    out = loss(make_batch(B, OBS, ACT))
    assert out["alpha"].item() == pytest.approx(10.0)
    out["loss_alpha"].backward()
    # d/dlog_alpha of -exp(log_alpha_st) * c is -10 * c: the loss value itself, although the clamp is active
    torch.testing.assert_close(loss.log_alpha.grad, out["loss_alpha"].detach())
    assert loss.log_alpha.item() == pytest.approx(math.log(20.0))  # not clamped in place
    fixed = redq(fixed_alpha=True, alpha_init=0.3)
    assert "alpha" not in fixed.parameter_groups


def test_redq_reductions():
    check_reductions(redq, make_batch(B, OBS, ACT))


def test_redq_set_keys_and_priority():
    check_set_keys(redq())
    batch = make_batch(B, OBS, ACT)
    before = batch.clone()
    redq()(batch)
    for key in before.keys(include_nested=True, leaves_only=True):
        assert torch.equal(before[key], batch[key]), key


# ---- CrossQ ----------------------------------------------------------------------------------------
def brn_critic(warmup_steps: int = 100_000) -> ValueOperator:
    return ValueOperator(BRNMLP(OBS + ACT, 1, (16, 16), warmup_steps=warmup_steps), in_keys=["observation", "action"])


def crossq(**kwargs) -> CrossQLoss:
    torch.manual_seed(0)
    return CrossQLoss(make_actor(OBS, ACT), brn_critic(), **kwargs)


def test_crossq_each_term_reaches_only_its_group():
    loss = crossq()
    assert loss.loss_groups == {"loss_actor": "actor", "loss_qvalue": "qvalue", "loss_alpha": "alpha"}
    check_isolation(loss, make_batch(B, OBS, ACT))


def test_crossq_sum_of_terms_trains_every_parameter():
    check_sum_trains_everything(crossq(), make_batch(B, OBS, ACT))


def test_crossq_has_no_target_networks():
    loss = crossq()
    assert not any("target" in n for n, _ in [*loss.named_parameters(), *loss.named_buffers()] if n != "target_entropy")
    assert not any(name.startswith("target_") for name in vars(loss))
    with pytest.raises(RuntimeError, match="no target networks"):
        loss.target_pairs()
    with pytest.raises(RuntimeError, match="no target networks"):
        SoftUpdate(loss, tau=0.005)


@pytest.mark.parametrize("warmup_steps", [100_000, 0])
def test_crossq_losses_match_the_spec_formulas(warmup_steps):
    torch.manual_seed(1)
    actor = make_actor(OBS, ACT)
    critics = [brn_critic(warmup_steps) for _ in range(2)]
    references = [copy.deepcopy(c.module) for c in critics]
    loss = CrossQLoss(actor, critics, loss_function="l2", alpha_init=0.5)
    loss.make_value_estimator(gamma=0.9)
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(7)
    out = loss(batch.clone())
    out["loss_qvalue"].backward()

    torch.manual_seed(7)
    noise_next, noise = torch.randn(B, ACT), torch.randn(B, ACT)
    net, alpha, gamma = actor.module.module, 0.5, 0.9
    obs, act, next_obs, reward, not_term = unpack_transition(batch)
    with torch.no_grad():
        next_action, next_log_prob = tanh_normal_by_hand(*net(next_obs), noise_next)
    # the joint forward, train mode: statistics over current and next rows together
    joint_obs, joint_act = torch.cat([obs, next_obs]), torch.cat([act, next_action])
    q = torch.stack([ref(joint_obs, joint_act).squeeze(-1) for ref in references])
    pred, next_q = q[:, :B], q[:, B:]
    y = reward + gamma * not_term * (next_q.min(0).values - alpha * next_log_prob)
    expected_q = ((pred - y.detach()) ** 2).sum(0).mean()
    expected_q.backward(retain_graph=True)
    with torch.no_grad():
        new_action, log_prob = tanh_normal_by_hand(*net(obs), noise)
        for ref in references:
            ref.eval()
        q_actor = torch.stack([ref(obs, new_action).squeeze(-1) for ref in references])

    tol = dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_qvalue"], expected_q, **tol)
    torch.testing.assert_close(out["td_error"], (pred - y).abs().max(0).values.detach(), **tol)
    torch.testing.assert_close(out["loss_actor"], (alpha * log_prob - q_actor.min(0).values).mean(), **tol)
    torch.testing.assert_close(out["loss_alpha"], (-math.log(alpha) * (log_prob - ACT)).mean(), **tol)
    torch.testing.assert_close(out["entropy"], -log_prob.mean(), **tol)
    torch.testing.assert_close(out["log_prob"], log_prob, **tol)
    # the critic gradient equals the hand one with y detached: the target half sends no gradient
    # through y (only through the shared normalization statistics)
    assert_stacked_grads_match(loss.qvalue_network, references)
    for ref in references:
        ref.zero_grad()
    ((pred - y) ** 2).sum(0).mean().backward()
    with pytest.raises(AssertionError):
        assert_stacked_grads_match(loss.qvalue_network, references)


def test_crossq_statistics_cover_both_halves_and_actor_uses_running_statistics():
    loss = crossq(num_qvalue_nets=2)
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(3)
    loss(batch.clone())
    torch.manual_seed(3)
    with torch.no_grad():
        next_action = loss.actor_network.distribution(batch["next", "observation"]).rsample_and_log_prob()[0]
    joint_input = torch.cat([torch.cat([batch["observation"], batch["action"]], -1),
                             torch.cat([batch["next", "observation"], next_action], -1)])
    critic = loss.qvalue_network
    for k in range(2):
        torch.testing.assert_close(critic.running_mean_0[k, 0], 0.01 * joint_input.mean(0))
    # one counted training forward per update: the actor's critic call used the running statistics
    for j in range(3):
        assert (getattr(critic, f"num_batches_tracked_{j}") == 1).all()


def test_crossq_critic_form_is_checked():
    actor = make_actor(OBS, ACT)

    class Custom(nn.Module):
        def forward(self, obs, act):
            return obs.sum(-1, keepdim=True)

    with pytest.raises(TypeError, match="cannot stack critic"):
        CrossQLoss(actor, ValueOperator(Custom(), in_keys=["observation", "action"]))
    with pytest.raises(TypeError, match="cannot stack critic layer"):
        dropout = nn.Sequential(nn.Linear(OBS + ACT, 8), nn.Dropout(0.1), nn.Linear(8, 1))
        CrossQLoss(actor, ValueOperator(dropout, in_keys=["observation", "action"]))
    with pytest.raises(TypeError, match="ValueOperator"):
        CrossQLoss(actor, BRNMLP(OBS + ACT, 1, (8,)))
    with pytest.raises(ValueError, match="num_qvalue_nets"):
        CrossQLoss(actor, brn_critic(), num_qvalue_nets=0)
    # a plain MLP critic (no normalization) is accepted
    CrossQLoss(actor, make_qvalue(OBS, ACT))(make_batch(B, OBS, ACT))


def test_crossq_target_entropy():
    assert crossq().target_entropy.item() == -ACT
    assert crossq(target_entropy=-0.25).target_entropy.item() == -0.25
    actor = make_actor(OBS, 4)
    actor.spec = None
    loss = CrossQLoss(actor, ValueOperator(BRNMLP(OBS + 4, 1, (8,)), in_keys=["observation", "action"]))
    loss(make_batch(B, OBS, 4))  # no spec anywhere: -dim A is read from the batch
    assert loss.target_entropy.item() == -4


def test_crossq_reductions():
    check_reductions(crossq, make_batch(B, OBS, ACT))


def test_crossq_set_keys_priority_and_inputs_kept():
    check_set_keys(crossq())
    batch = make_batch(B, OBS, ACT)
    before = batch.clone()
    out = crossq()(batch)
    assert out["td_error"].shape == (B,)
    torch.testing.assert_close(batch["td_error"].squeeze(-1), out["td_error"])
    for key in before.keys(include_nested=True, leaves_only=True):
        assert torch.equal(before[key], batch[key]), key


def test_crossq_alpha_bounds_and_deprecated_arguments():
    loss = crossq(alpha_init=1.0, min_alpha=0.2, max_alpha=0.5)
    assert loss(make_batch(B, OBS, ACT))["alpha"].item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="max_alpha"):
        crossq(max_alpha=0)
    with pytest.raises(TypeError, match="set_keys"):
        crossq(priority_key="p")
    with pytest.raises(TypeError):
        crossq(gamma=0.9)
    fixed = crossq(fixed_alpha=True)
    assert "alpha" not in fixed.parameter_groups
