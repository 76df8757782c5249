"""TD3Loss and DDPGLoss: gradient isolation, targets, the spec's formulas recomputed by hand,
TD3's half-range target noise, keys, reductions, constructor errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rltrain.modules import MLP, Actor, Bounded, ValueOperator
from rltrain.objectives.ddpg import DDPGLoss
from rltrain.objectives.td3 import TD3Loss
from tests.helpers import PairCritic, assert_state_dict_round_trip, grads_by_group, make_batch, make_qvalue

OBS, ACT, B = 3, 2, 12


def make_det_actor(obs_dim: int = OBS, act_dim: int = ACT, scale: float = 1.0) -> Actor:
    """``a = scale * tanh(MLP(s))``."""
    layers = [MLP(obs_dim, act_dim, (16,)), nn.Tanh()]
    if scale != 1.0:
        layers.append(_Scale(scale))
    return Actor(nn.Sequential(*layers))


class _Scale(nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, x):
        return x * self.scale


def td3(**kwargs) -> TD3Loss:
    torch.manual_seed(0)
    kwargs.setdefault("bounds", (-1.0, 1.0))
    return TD3Loss(make_det_actor(), make_qvalue(OBS, ACT), **kwargs)


def ddpg(**kwargs) -> DDPGLoss:
    torch.manual_seed(0)
    return DDPGLoss(make_det_actor(), make_qvalue(OBS, ACT), **kwargs)




def _unpack(batch):
    """obs, action, next obs, reward [B], (1 - terminated) [B] as floats."""
    reward = batch["next", "reward"].squeeze(-1)
    not_terminated = 1.0 - batch["next", "terminated"].squeeze(-1).float()
    return batch["observation"], batch["action"], batch["next", "observation"], reward, not_terminated


def q(module: ValueOperator, obs, action):
    return module.module(obs, action).squeeze(-1)


# ---- shared contract: both objectives -------------------------------------------------------------
BUILDERS = {
    "td3": (td3, {"loss_actor": "actor", "loss_qvalue": "qvalue"}),
    "ddpg": (ddpg, {"loss_actor": "actor", "loss_value": "value"}),
}


@pytest.mark.parametrize("name", BUILDERS)
@pytest.mark.parametrize("delay_actor", [False, True])
def test_each_term_reaches_only_its_group(name, delay_actor):
    build, expected_groups = BUILDERS[name]
    loss = build(delay_actor=delay_actor)
    assert loss.loss_groups == expected_groups
    for term, group in expected_groups.items():
        loss.zero_grad(set_to_none=True)
        loss(make_batch(B, OBS, ACT))[term].backward()
        touched = grads_by_group(loss)
        assert touched[group], f"{term} gave no gradient to its group {group}"
        assert not any(hit for g, hit in touched.items() if g != group), f"{term} leaked into {touched}"


@pytest.mark.parametrize("name", BUILDERS)
def test_sum_of_terms_trains_every_parameter_and_no_target(name):
    loss = BUILDERS[name][0](delay_actor=True)
    out = loss(make_batch(B, OBS, ACT))
    sum(v for k, v in out.items() if k.startswith("loss_")).backward()
    for param_name, param in loss.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, param_name
    assert {n.split(".")[0] for n, _ in loss.named_buffers() if n.startswith("target_")} == {
        "target_actor_network", f"target_{'qvalue' if name == 'td3' else 'value'}_network"}
    assert not any(n.startswith("target_") for n, _ in loss.named_parameters())
    assert all(not b.requires_grad and b.grad is None for n, b in loss.named_buffers() if n.startswith("target_"))
    assert all(not v.requires_grad for k, v in out.items() if not k.startswith("loss_"))


@pytest.mark.parametrize("name", BUILDERS)
def test_actor_parameters_are_the_users(name):
    torch.manual_seed(0)
    actor = make_det_actor()
    if name == "td3":
        loss = TD3Loss(actor, make_qvalue(OBS, ACT), bounds=(-1.0, 1.0))
    else:
        loss = DDPGLoss(actor, make_qvalue(OBS, ACT))
    assert {id(p) for p in actor.parameters()} == {id(p) for p in loss.group_parameters("actor")}


@pytest.mark.parametrize("name, critic", [("td3", "qvalue_network"), ("ddpg", "value_network")])
def test_delayed_targets_stay_and_non_delayed_alias(name, critic):
    flag = "delay_qvalue" if name == "td3" else "delay_value"
    loss = BUILDERS[name][0](delay_actor=True, **{flag: True})
    before = {n: b.clone() for n, b in loss.named_buffers() if n.startswith("target_")}
    with torch.no_grad():
        for p in loss.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[n], b) for n, b in loss.named_buffers() if n in before)

    aliased = BUILDERS[name][0](delay_actor=False, **{flag: False})
    assert aliased.target_actor_network is aliased.actor_network
    assert getattr(aliased, f"target_{critic}") is getattr(aliased, critic)


@pytest.mark.parametrize("name", BUILDERS)
def test_reductions_and_priority_weights(name):
    build, groups = BUILDERS[name]
    batch = make_batch(B, OBS, ACT)
    outs = {}
    for reduction in ("none", "sum", "mean"):
        torch.manual_seed(0)
        outs[reduction] = build(reduction=reduction)(batch.clone())
    for key in groups:
        assert outs["none"][key].shape == (B,)
        torch.testing.assert_close(outs["sum"][key], outs["none"][key].sum())
        torch.testing.assert_close(outs["mean"][key], outs["none"][key].mean())
    weight = torch.rand(B)
    weighted_batch = batch.clone()
    weighted_batch["priority_weight"] = weight
    torch.manual_seed(0)
    weighted = build()(weighted_batch)
    for key in groups:
        torch.testing.assert_close(weighted[key], (weight * outs["none"][key]).sum() / weight.sum())
    with pytest.raises(ValueError, match="reduction"):
        build(reduction="median")


@pytest.mark.parametrize("name", BUILDERS)
def test_priority_is_written_and_inputs_kept(name):
    batch = make_batch(B, OBS, ACT)
    before = batch.clone()
    BUILDERS[name][0]()(batch)
    assert batch["td_error"].shape == (B, 1) and (batch["td_error"] >= 0).all()
    for key in before.keys(include_nested=True, leaves_only=True):
        assert torch.equal(before[key], batch[key]), key


@pytest.mark.parametrize("name", BUILDERS)
def test_set_keys(name):
    loss = BUILDERS[name][0]()
    with pytest.raises(ValueError, match="unknown key 'not_a_key'"):
        loss.set_keys(not_a_key="x")
    loss.set_keys(priority="my_priority")
    batch = make_batch(B, OBS, ACT)
    loss(batch)
    assert "my_priority" in batch.keys()
    loss.set_keys(priority=None)
    assert loss.tensor_keys.priority == "td_error"


@pytest.mark.parametrize("name", BUILDERS)
def test_truncated_bootstraps_terminated_does_not(name):
    build, groups = BUILDERS[name]
    critic_term = next(k for k in groups if k != "loss_actor")
    batch = make_batch(B, OBS, ACT)
    batch["next", "terminated"][:] = False
    batch["next", "truncated"][:] = True
    results = {}
    for case in ("truncated", "running", "terminal"):
        if case == "running":
            batch["next", "truncated"][:] = False
        if case == "terminal":
            batch["next", "terminated"][:] = True
        torch.manual_seed(0)
        results[case] = build(loss_function="l2")(batch.clone())[critic_term]
    assert torch.equal(results["truncated"], results["running"])
    assert not torch.allclose(results["terminal"], results["running"])


@pytest.mark.parametrize("name", BUILDERS)
def test_state_dict_round_trip(name):
    assert_state_dict_round_trip(BUILDERS[name][0], make_batch(B, OBS, ACT))


def test_deprecated_constructor_arguments_raise():
    for build in (td3, ddpg):
        with pytest.raises(TypeError, match="make_value_estimator"):
            build(gamma=0.9)
        with pytest.raises(ValueError, match="loss_function"):
            build(loss_function="huber")
    with pytest.raises(TypeError, match="set_keys"):
        td3(priority_key="p")


# ---- TD3 ---------------------------------------------------------------------------------------
def test_td3_losses_and_metadata_match_the_spec_formulas():
    """Two critics given as a list, bounds [-2, 2] (half range 2), l2, gamma 0.9."""
    torch.manual_seed(1)
    actor = make_det_actor(scale=2.0)
    q1, q2 = make_qvalue(OBS, ACT), make_qvalue(OBS, ACT)
    loss = TD3Loss(actor, [q1, q2], bounds=(-2.0, 2.0), loss_function="l2", policy_noise=0.3, noise_clip=0.4)
    loss.make_value_estimator(gamma=0.9)
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(7)
    out = loss(batch)

    torch.manual_seed(7)
    noise = torch.randn(B, ACT)
    obs, act, next_obs, reward, not_term = _unpack(batch)
    with torch.no_grad():
        eps = (noise * 0.3).clamp(-0.4, 0.4) * 2.0
        next_action = (actor.module(next_obs) + eps).clamp(-2.0, 2.0)
        next_value = torch.min(q(q1, next_obs, next_action), q(q2, next_obs, next_action))
        y = reward + 0.9 * not_term * next_value
        pred = torch.stack([q(q1, obs, act), q(q2, obs, act)])
        expected_q = ((pred - y) ** 2).sum(0).mean()
        q_actor = q(q1, obs, actor.module(obs))
        q2_actor = q(q2, obs, actor.module(obs))

    torch.testing.assert_close(out["loss_qvalue"], expected_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_actor"], -q_actor.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["pred_value"], pred)
    torch.testing.assert_close(out["next_state_value"], next_value)
    torch.testing.assert_close(out["target_value"], y)
    torch.testing.assert_close(out["state_action_value_actor"], torch.stack([q_actor, q2_actor]))
    torch.testing.assert_close(batch["td_error"].squeeze(-1), ((pred - y) ** 2).max(0).values)


def test_td3_target_noise_is_in_units_of_the_half_range():
    """Bounds [-2, 2]: the clean target action (|mu| <= 1) plus noise never reaches the bounds, so the
    deviation is the noise itself: within noise_clip * 2, and beyond noise_clip alone."""
    loss = TD3Loss(make_det_actor(), make_qvalue(OBS, ACT), bounds=(-2.0, 2.0), policy_noise=0.2, noise_clip=0.5)
    next_obs = torch.randn(4096, OBS)
    clean = loss.target_actor_network.module(next_obs)
    torch.manual_seed(0)
    deviation = (loss.smoothed_target_action(next_obs) - clean).abs()
    assert deviation.max() <= 0.5 * 2.0 + 1e-6
    assert deviation.max() > 0.5 + 0.1
    torch.testing.assert_close(deviation.max(), torch.tensor(1.0))  # some draws hit the clip
    # the unclipped noise has std policy_noise * half_range (a normal truncated at 2.5 sigma: ~0.98)
    inner = deviation[deviation < 0.5 * 2.0 - 1e-4]
    assert 0.9 < inner.pow(2).mean().sqrt() / (0.2 * 2.0) < 1.05


def test_td3_noise_scale_is_per_dimension_and_actions_stay_in_bounds():
    low, high = torch.tensor([0.0, -3.0]), torch.tensor([1.0, 1.0])  # half ranges 0.5 and 2
    loss = TD3Loss(make_det_actor(), make_qvalue(OBS, ACT), action_spec=Bounded(low, high),
                   policy_noise=1e6, noise_clip=0.5)
    torch.testing.assert_close(loss.action_half_range, torch.tensor([0.5, 2.0]))
    next_obs = torch.randn(512, OBS)
    clean = loss.target_actor_network.module(next_obs)
    torch.manual_seed(0)
    action = loss.smoothed_target_action(next_obs)
    assert (action >= low).all() and (action <= high).all()
    # with a huge policy_noise every draw saturates at +-noise_clip * half range before the box clip
    torch.manual_seed(0)
    sign = torch.randn(512, ACT).sign()
    torch.testing.assert_close(action, (clean + sign * torch.tensor([0.25, 1.0])).clamp(low, high))


def test_td3_bounds_arguments():
    actor, critic = make_det_actor(), make_qvalue(OBS, ACT)
    spec = Bounded(-torch.ones(ACT), torch.ones(ACT))
    with pytest.raises(ValueError, match="exactly one"):
        TD3Loss(actor, critic)
    with pytest.raises(ValueError, match="exactly one"):
        TD3Loss(actor, critic, action_spec=spec, bounds=(-1.0, 1.0))
    with pytest.raises(ValueError, match="low <= high"):
        TD3Loss(actor, critic, bounds=(1.0, -1.0))
    with pytest.raises(ValueError, match="finite"):
        TD3Loss(actor, critic, bounds=(-float("inf"), 1.0))
    with pytest.raises(ValueError, match="pair"):
        TD3Loss(actor, critic, bounds=1.0)
    with pytest.raises(TypeError, match="Bounded"):
        TD3Loss(actor, critic, action_spec=(-1.0, 1.0))
    loss = TD3Loss(actor, critic, bounds=(torch.tensor([-1.0, -2.0]), 2.0))
    torch.testing.assert_close(loss.min_action, torch.tensor([-1.0, -2.0]))
    torch.testing.assert_close(loss.max_action, torch.tensor([2.0, 2.0]))
    assert {"min_action", "max_action", "action_half_range"} <= set(dict(loss.named_buffers()))


def test_td3_other_constructor_errors():
    with pytest.raises(ValueError, match="num_qvalue_nets"):
        td3(num_qvalue_nets=0)
    with pytest.raises(ValueError, match="policy_noise"):
        td3(policy_noise=-0.1)
    with pytest.raises(ValueError, match="must read the action"):
        TD3Loss(make_det_actor(), ValueOperator(MLP(OBS, 1), in_keys=["observation"]), bounds=(-1.0, 1.0))
    with pytest.raises(TypeError, match="ValueOperator"):
        TD3Loss(make_det_actor(), MLP(OBS + ACT, 1), bounds=(-1.0, 1.0))


def test_td3_defaults_and_ensemble_size():
    loss = td3(num_qvalue_nets=3)
    assert loss.loss_function == "smooth_l1" and loss.num_qvalue_nets == 3
    assert loss.policy_noise == 0.2 and loss.noise_clip == 0.5
    assert isinstance(loss.target_actor_network, Actor) and loss.target_actor_network is not loss.actor_network
    out = loss(make_batch(B, OBS, ACT))
    assert out["pred_value"].shape == (3, B)
    assert out["state_action_value_actor"].shape == (3, B)
    assert out["next_state_value"].shape == (B,) and out["target_value"].shape == (B,)




def test_td3_deactivate_vmap_matches_vmap():
    outs = []
    for deactivate in (False, True):
        torch.manual_seed(0)
        critic = ValueOperator(PairCritic(OBS + ACT), in_keys=["observation", "action"])
        loss = TD3Loss(make_det_actor(), critic, bounds=(-1.0, 1.0), deactivate_vmap=deactivate)
        torch.manual_seed(3)
        outs.append(loss(make_batch(B, OBS, ACT)))
    for key in outs[0].keys():
        torch.testing.assert_close(outs[0][key], outs[1][key])


# ---- DDPG --------------------------------------------------------------------------------------
@pytest.mark.parametrize("delay_actor", [False, True])
def test_ddpg_losses_and_metadata_match_the_spec_formulas(delay_actor):
    torch.manual_seed(2)
    actor, critic = make_det_actor(), make_qvalue(OBS, ACT)
    loss = DDPGLoss(actor, critic, delay_actor=delay_actor)
    loss.make_value_estimator(gamma=0.8)
    batch = make_batch(B, OBS, ACT)
    out = loss(batch)

    obs, act, next_obs, reward, not_term = _unpack(batch)
    with torch.no_grad():
        y = reward + 0.8 * not_term * q(critic, next_obs, actor.module(next_obs))
        pred = q(critic, obs, act)
        q_actor = q(critic, obs, actor.module(obs))
    torch.testing.assert_close(out["loss_value"], ((pred - y) ** 2).mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["loss_actor"], -q_actor.mean(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out["pred_value"], pred)
    torch.testing.assert_close(out["target_value"], y)
    torch.testing.assert_close(out["td_error"], (pred - y) ** 2)
    torch.testing.assert_close(out["pred_value_max"], pred.max())
    torch.testing.assert_close(out["target_value_max"], y.max())
    torch.testing.assert_close(batch["td_error"].squeeze(-1), (pred - y) ** 2)


def test_ddpg_defaults():
    loss = ddpg()
    assert loss.loss_function == "l2"
    assert loss.target_actor_network is loss.actor_network
    assert loss.target_value_network is not loss.value_network
    out = loss(make_batch(B, OBS, ACT))
    assert set(out.keys()) == {"loss_actor", "loss_value", "td_error", "pred_value", "target_value",
                               "pred_value_max", "target_value_max"}


def test_ddpg_constructor_errors():
    with pytest.raises(ValueError, match="must read the actor's action"):
        DDPGLoss(make_det_actor(), ValueOperator(MLP(OBS, 1), in_keys=["observation"]))
    with pytest.raises(TypeError, match="ValueOperator"):
        DDPGLoss(make_det_actor(), MLP(OBS + ACT, 1))
    with pytest.raises(TypeError, match="actor_network"):
        DDPGLoss(MLP(OBS, ACT), make_qvalue(OBS, ACT))
