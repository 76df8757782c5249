"""IQLLoss, DiscreteIQLLoss, TD3BCLoss, BCLoss and CategoricalActor: the spec's formulas recomputed by
hand on tiny networks, gradient isolation, target critics, forward_terms, masks, reductions, keys,
constructor errors."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from tensordict.nn import InteractionType, TensorDictModule, set_interaction_type
from torch import distributions as D
from torch import nn

from rltrain.modules import MLP, Actor, Bounded, Categorical, CategoricalActor, ValueOperator
from rltrain.objectives.bc import BCLoss
from rltrain.objectives.iql import DiscreteIQLLoss, IQLLoss
from rltrain.objectives.td3 import TD3Loss
from rltrain.objectives.td3_bc import TD3BCLoss
from rltrain.updaters import HardUpdate
from tests.helpers import (
    PairCritic, assert_state_dict_round_trip, check_isolation, check_sum_trains_everything, make_actor, make_batch,
    make_qvalue, make_value, unpack_transition,
)

OBS, ACT, NA, B = 3, 2, 4, 12


# ---- builders and shared checks ---------------------------------------------------------------------
def make_categorical_actor(seed: int | None = None) -> CategoricalActor:
    if seed is not None:
        torch.manual_seed(seed)
    return CategoricalActor(MLP(OBS, NA, (16,)), spec=Categorical(NA))


def make_det_actor() -> Actor:
    return Actor(nn.Sequential(MLP(OBS, ACT, (16,)), nn.Tanh()))


def make_discrete_qvalue() -> ValueOperator:
    return ValueOperator(MLP(OBS, NA, (16,)), in_keys=["observation"])


def discrete_batch(action_space: str = "categorical", batch: int = B, seed: int = 0) -> TensorDict:
    td = make_batch(batch, OBS, 1, seed=seed)
    index = torch.randint(NA, (batch,), generator=torch.Generator().manual_seed(seed + 1))
    td["action"] = index if action_space == "categorical" else F.one_hot(index, NA)
    return td


def iql(**kwargs) -> IQLLoss:
    torch.manual_seed(0)
    return IQLLoss(make_actor(OBS, ACT), make_qvalue(OBS, ACT), make_value(OBS), **kwargs)


def discrete_iql(action_space: str = "categorical", **kwargs) -> DiscreteIQLLoss:
    torch.manual_seed(0)
    return DiscreteIQLLoss(make_categorical_actor(), make_discrete_qvalue(), make_value(OBS),
                           action_space=action_space, **kwargs)


def td3bc(**kwargs) -> TD3BCLoss:
    torch.manual_seed(0)
    kwargs.setdefault("bounds", (-1.0, 1.0))
    return TD3BCLoss(make_det_actor(), make_qvalue(OBS, ACT), **kwargs)








def q(module: ValueOperator, *inputs) -> torch.Tensor:
    return module.module(*inputs).squeeze(-1)


def tanh_normal_log_prob_by_hand(loc, scale, action):
    """log-density of a TanhNormal on [-1, 1] at ``action``, from the change-of-variables formula."""
    return (D.Normal(loc, scale).log_prob(torch.atanh(action)) - torch.log(1 - action.pow(2))).sum(-1)


def centre_advantages_(loss: IQLLoss, batch: TensorDict) -> torch.Tensor:
    """Shift V's output bias so that ``u = Q_min(s, a) - V(s)`` takes both signs; returns ``u``."""
    obs, act = batch["observation"], batch["action"]
    with torch.no_grad():
        u = loss.target_qvalue_network(obs, act).min(0).values.squeeze(-1) - q(loss.value_network, obs)
        loss.value_network.module[-1].bias.add_(u.median())
        return u - u.median()


IQL_BUILDERS = {
    "iql": (iql, lambda: make_batch(B, OBS, ACT)),
    "discrete_categorical": (discrete_iql, discrete_batch),
    "discrete_one_hot": (lambda **kw: discrete_iql("one_hot", **kw), lambda: discrete_batch("one_hot")),
}


# ---- CategoricalActor ---------------------------------------------------------------------------------
def test_categorical_actor_acts_and_scores_from_its_logits():
    actor = make_categorical_actor(seed=0)
    obs = torch.randn(B, OBS)
    logits = actor.module(obs)
    torch.testing.assert_close(actor.logits(obs), logits)
    assert torch.equal(actor.act(obs, deterministic=True), logits.argmax(-1))
    index = torch.randint(NA, (B,))
    torch.testing.assert_close(actor.distribution(obs).log_prob(index),
                               logits.log_softmax(-1).gather(-1, index.unsqueeze(-1)).squeeze(-1))
    torch.manual_seed(3)
    sample = actor.act(obs)
    torch.manual_seed(3)
    assert torch.equal(sample, D.Categorical(logits=logits).sample())
    assert sample.dtype == torch.long and sample.shape == (B,)


def test_categorical_actor_tensordict_forward():
    net = TensorDictModule(MLP(OBS, NA, (8,)), in_keys=["obs"], out_keys=["my_logits"])
    actor = CategoricalActor(net, return_log_prob=True)
    assert actor.in_keys == ["obs"] and actor.out_keys == ["my_logits", "action", actor.log_prob_key]
    td = actor(TensorDict({"obs": torch.randn(B, OBS)}, [B]))
    logits = net.module(td["obs"])
    assert torch.equal(td["action"], logits.argmax(-1))  # deterministic by default
    torch.testing.assert_close(td[actor.log_prob_key], logits.log_softmax(-1).max(-1).values)
    with set_interaction_type(InteractionType.RANDOM):
        torch.manual_seed(1)
        sampled = actor(TensorDict({"obs": td["obs"]}, [B]))["action"]
    torch.manual_seed(1)
    assert torch.equal(sampled, D.Categorical(logits=logits).sample())


# ---- IQL and discrete IQL: contract --------------------------------------------------------------------
@pytest.mark.parametrize("name", IQL_BUILDERS)
def test_iql_each_term_reaches_only_its_group(name):
    build, batch = IQL_BUILDERS[name]
    loss = build()
    assert loss.loss_groups == {"loss_actor": "actor", "loss_qvalue": "qvalue", "loss_value": "value"}
    check_isolation(loss, batch())


@pytest.mark.parametrize("name", IQL_BUILDERS)
def test_iql_sum_of_terms_trains_every_parameter_and_no_target(name):
    build, batch = IQL_BUILDERS[name]
    loss = build()
    check_sum_trains_everything(loss, batch())
    assert {n.split(".")[0] for n, _ in loss.named_buffers() if n.startswith("target_")} == {"target_qvalue_network"}


def test_iql_actor_parameters_are_the_users():
    actor = make_actor(OBS, ACT)
    loss = IQLLoss(actor, make_qvalue(OBS, ACT), make_value(OBS))
    assert {id(p) for p in actor.parameters()} == {id(p) for p in loss.group_parameters("actor")}


@pytest.mark.parametrize("name", IQL_BUILDERS)
def test_iql_actor_and_value_read_the_target_critics(name):
    """Perturbing the online critics moves only the critic loss; an update of the targets then moves
    the actor and value losses too. The targets themselves stay put until the updater runs."""
    build, make = IQL_BUILDERS[name]
    loss, batch = build(), make()
    before = loss(batch.clone())
    targets = [b.clone() for b in loss.target_qvalue_network.buffers()]
    with torch.no_grad():
        for p in loss.qvalue_network.parameters():
            p.add_(0.5)
    perturbed = loss(batch.clone())
    assert all(torch.equal(a, b) for a, b in zip(targets, loss.target_qvalue_network.buffers()))
    assert torch.equal(perturbed["loss_value"], before["loss_value"])
    assert torch.equal(perturbed["loss_actor"], before["loss_actor"])
    assert not torch.equal(perturbed["loss_qvalue"], before["loss_qvalue"])
    HardUpdate(loss, value_network_update_interval=1)  # copies online -> target on construction
    synced = loss(batch.clone())
    assert not torch.equal(synced["loss_value"], perturbed["loss_value"])
    assert not torch.equal(synced["loss_actor"], perturbed["loss_actor"])


@pytest.mark.parametrize("name", IQL_BUILDERS)
def test_iql_forward_terms_computes_only_the_requested_terms(name):
    build, make = IQL_BUILDERS[name]
    loss, batch = build(), make()
    full = loss(batch.clone())
    for terms in ({"loss_qvalue"}, {"loss_value"}, {"loss_actor"}, {"loss_actor", "loss_value"}):
        part = loss.forward_terms(batch.clone(), frozenset(terms))
        assert {k for k in part.keys() if k.startswith("loss_")} == terms
        assert ("entropy" in part.keys()) == ("loss_actor" in terms)
        for key in part.keys():
            torch.testing.assert_close(part[key], full[key])


@pytest.mark.parametrize("name", IQL_BUILDERS)
def test_iql_reductions(name):
    build, make = IQL_BUILDERS[name]
    batch = make()
    outs = {reduction: build(reduction=reduction, scalar_output_mode="exclude")(batch.clone())
            for reduction in ("none", "sum", "mean")}
    for key in ("loss_actor", "loss_qvalue", "loss_value"):
        assert outs["none"][key].shape == (B,)
        torch.testing.assert_close(outs["sum"][key], outs["none"][key].sum())
        torch.testing.assert_close(outs["mean"][key], outs["none"][key].mean())
    assert "entropy" not in outs["none"].keys() and "entropy" in outs["mean"].keys()
    with pytest.warns(UserWarning, match="scalar_output_mode"):
        build(reduction="none")(batch.clone())


@pytest.mark.parametrize("name", IQL_BUILDERS)
def test_iql_state_dict_round_trip(name):
    build, make = IQL_BUILDERS[name]
    assert_state_dict_round_trip(build, make())


# ---- IQL: the formulas ----------------------------------------------------------------------------------
def test_iql_losses_match_the_spec_formulas():
    torch.manual_seed(1)
    actor, value = make_actor(OBS, ACT), make_value(OBS)
    q1, q2 = make_qvalue(OBS, ACT), make_qvalue(OBS, ACT)
    loss = IQLLoss(actor, [q1, q2], value, loss_function="l2", temperature=3.0, expectile=0.7)
    loss.make_value_estimator(gamma=0.9)
    batch = make_batch(B, OBS, ACT)
    out = loss(batch)

    obs, act, next_obs, reward, not_term = unpack_transition(batch)
    with torch.no_grad():
        pred = torch.stack([q(q1, obs, act), q(q2, obs, act)])
        advantage = pred.min(0).values - q(value, obs)  # the targets start as copies of the critics
        assert (advantage > 0).any() and (advantage < 0).any()
        expected_value = (torch.where(advantage > 0, 0.7, 0.3) * advantage ** 2).mean()
        y = reward + 0.9 * not_term * q(value, next_obs)
        expected_q = ((pred - y) ** 2).sum(0).mean()
        log_prob = tanh_normal_log_prob_by_hand(*actor.module.module(obs), act)
        expected_actor = (-torch.exp(3.0 * advantage).clamp(max=100.0) * log_prob).mean()

    torch.testing.assert_close(out["loss_value"], expected_value, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_qvalue"], expected_q, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_actor"], expected_actor, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["entropy"], -log_prob.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch["td_error"].squeeze(-1), ((pred - y) ** 2).max(0).values)
    torch.testing.assert_close(batch["_log_prob"], log_prob, rtol=1e-5, atol=1e-6)


def test_iql_expectile_weights_per_sample():
    loss = iql(expectile=0.9, reduction="none", scalar_output_mode="exclude")
    batch = make_batch(B, OBS, ACT)
    u = centre_advantages_(loss, batch)
    per_sample = loss(batch)["loss_value"]
    assert (u > 0).any() and (u < 0).any()
    torch.testing.assert_close(per_sample[u > 0], 0.9 * u[u > 0] ** 2)
    torch.testing.assert_close(per_sample[u < 0], 0.1 * u[u < 0] ** 2)


def test_iql_advantage_weights_are_clipped_at_100():
    loss = iql(temperature=200.0, reduction="none", scalar_output_mode="exclude")
    batch = make_batch(B, OBS, ACT)
    u = centre_advantages_(loss, batch)
    out = loss(batch.clone())
    obs, act = batch["observation"], batch["action"]
    with torch.no_grad():
        weight = torch.exp(200.0 * u)
        log_prob = loss.actor_network.distribution(obs).log_prob(act)
    assert (weight > 100).any() and (weight < 100).any()
    torch.testing.assert_close(out["loss_actor"], -weight.clamp(max=100.0) * log_prob, rtol=1e-5, atol=1e-6)


def test_iql_dataset_actions_on_the_bounds_stay_finite():
    loss = iql()
    batch = make_batch(B, OBS, ACT)
    batch["action"][:3] = 1.0
    batch["action"][3:6] = -1.0
    out = loss(batch)
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss_actor"].backward()
    assert all(torch.isfinite(p.grad).all() for p in loss.group_parameters("actor"))


def test_iql_bootstraps_through_truncation_not_termination():
    loss = iql(loss_function="l2")
    batch = make_batch(B, OBS, ACT)
    batch["next", "terminated"][:] = False
    batch["next", "truncated"][:] = True
    truncated = loss(batch.clone())["loss_qvalue"]
    batch["next", "truncated"][:] = False
    running = loss(batch.clone())["loss_qvalue"]
    batch["next", "terminated"][:] = True
    terminal = loss(batch.clone())["loss_qvalue"]
    assert torch.equal(truncated, running) and not torch.allclose(terminal, running)




def test_iql_deactivate_vmap_matches_vmap():
    outs = []
    for deactivate in (False, True):
        torch.manual_seed(0)
        critic = ValueOperator(PairCritic(OBS + ACT), in_keys=["observation", "action"])
        loss = IQLLoss(make_actor(OBS, ACT), critic, make_value(OBS), deactivate_vmap=deactivate)
        outs.append(loss(make_batch(B, OBS, ACT)))
    for key in outs[0].keys():
        torch.testing.assert_close(outs[0][key], outs[1][key])


# ---- discrete IQL: the formulas -----------------------------------------------------------------------------
def test_discrete_iql_losses_match_the_spec_formulas_for_every_action_layout():
    torch.manual_seed(2)
    actor, value = make_categorical_actor(), make_value(OBS)
    q1, q2 = make_discrete_qvalue(), make_discrete_qvalue()
    index = discrete_batch()["action"]
    outs = {}
    for layout, action in {"index": index, "index_1": index.unsqueeze(-1), "one_hot": F.one_hot(index, NA)}.items():
        space = "one_hot" if layout == "one_hot" else "categorical"
        loss = DiscreteIQLLoss(actor, [q1, q2], value, action_space=space, loss_function="l2", temperature=2.0,
                               expectile=0.8)
        batch = discrete_batch()
        batch["action"] = action
        outs[layout] = loss(batch)

    batch = discrete_batch()
    obs, _, next_obs, reward, not_term = unpack_transition(batch)
    with torch.no_grad():
        pick = index.unsqueeze(-1)
        pred = torch.stack([q1.module(obs).gather(-1, pick), q2.module(obs).gather(-1, pick)]).squeeze(-1)
        u = pred.min(0).values - q(value, obs)
        assert (u > 0).any() and (u < 0).any()
        y = reward + 0.99 * not_term * q(value, next_obs)
        log_prob = actor.module(obs).log_softmax(-1).gather(-1, pick).squeeze(-1)
        expected = {
            "loss_value": (torch.where(u > 0, 0.8, 0.2) * u ** 2).mean(),
            "loss_qvalue": ((pred - y) ** 2).sum(0).mean(),
            "loss_actor": (-torch.exp(2.0 * u).clamp(max=100.0) * log_prob).mean(),
            "entropy": -log_prob.mean(),
        }
    for layout, out in outs.items():
        for key, value_ in expected.items():
            torch.testing.assert_close(out[key], value_, rtol=1e-5, atol=1e-6, msg=f"{layout} {key}")


def test_discrete_iql_action_space_resolution():
    value, critic = make_value(OBS), make_discrete_qvalue()
    assert DiscreteIQLLoss(make_categorical_actor(), critic, value).action_space == "categorical"  # actor spec
    bare = CategoricalActor(MLP(OBS, NA))
    with pytest.warns(UserWarning, match="assuming one-hot"):
        assert DiscreteIQLLoss(bare, critic, value).action_space == "one_hot"
    with pytest.raises(ValueError, match="accepted"):
        DiscreteIQLLoss(bare, critic, value, action_space="discrete")
    with pytest.raises(ValueError, match="one-hot actions must be shaped"):
        discrete_iql("one_hot")(discrete_batch("categorical"))


# ---- IQL: constructor errors -------------------------------------------------------------------------------
def test_iql_constructor_errors():
    for build in (iql, discrete_iql):
        for expectile in (1.0, 1.5, 0.0):
            with pytest.raises(ValueError, match="expectile"):
                build(expectile=expectile)
        with pytest.raises(ValueError, match="num_qvalue_nets"):
            build(num_qvalue_nets=0)
        with pytest.raises(TypeError, match="make_value_estimator"):
            build(gamma=0.9)
        with pytest.raises(TypeError, match="set_keys"):
            build(priority_key="p")
        with pytest.raises(ValueError, match="loss_function"):
            build(loss_function="huber")
        with pytest.raises(ValueError, match="scalar_output_mode"):
            build(scalar_output_mode="non_tensor")
    actor, value = make_actor(OBS, ACT), make_value(OBS)
    with pytest.raises(ValueError, match="must read the action"):
        IQLLoss(actor, ValueOperator(MLP(OBS, 1), in_keys=["observation"]), value)
    with pytest.raises(TypeError, match="state-value network"):
        IQLLoss(actor, make_qvalue(OBS, ACT), None)
    with pytest.raises(TypeError, match="ValueOperator"):
        IQLLoss(actor, MLP(OBS + ACT, 1), value)
    with pytest.raises(TypeError, match="ProbabilisticActor"):  # a deterministic Actor is accepted, not a bare net
        IQLLoss(MLP(OBS, ACT), make_qvalue(OBS, ACT), value)
    with pytest.raises(TypeError, match="CategoricalActor"):
        DiscreteIQLLoss(actor, make_discrete_qvalue(), value, action_space="categorical")
    with pytest.raises(ValueError, match="must not read the action"):
        DiscreteIQLLoss(make_categorical_actor(), make_qvalue(OBS, ACT), value, action_space="categorical")


def test_iql_defaults_and_keys():
    loss = iql(num_qvalue_nets=3)
    assert (loss.loss_function, loss.temperature, loss.expectile, loss.num_qvalue_nets) == ("smooth_l1", 1.0, 0.5, 3)
    with pytest.raises(ValueError, match="unknown key"):
        loss.set_keys(priority_weight="w")  # IQL does not use priority weights
    loss.set_keys(priority="my_priority", log_prob="my_log_prob")
    batch = make_batch(B, OBS, ACT)
    before = batch.clone()
    loss(batch)
    assert batch["my_priority"].shape == (B, 1) and batch["my_log_prob"].shape == (B,)
    for key in before.keys(include_nested=True, leaves_only=True):
        assert torch.equal(before[key], batch[key]), key


# ---- TD3+BC ------------------------------------------------------------------------------------------
def test_td3bc_contract():
    loss = td3bc()
    assert loss.loss_groups == {"loss_actor": "actor", "loss_qvalue": "qvalue"} and loss.alpha == 2.5
    batch = make_batch(B, OBS, ACT)
    check_isolation(loss, batch)
    check_sum_trains_everything(loss, batch)


def test_td3bc_critic_is_td3s_and_actor_matches_the_spec_formula():
    torch.manual_seed(1)
    actor = make_det_actor()
    q1, q2 = make_qvalue(OBS, ACT), make_qvalue(OBS, ACT)
    loss = TD3BCLoss(actor, [q1, q2], bounds=(-1.0, 1.0), loss_function="l2", alpha=1.5)
    reference = TD3Loss(actor, [q1, q2], bounds=(-1.0, 1.0), loss_function="l2")
    batch = make_batch(B, OBS, ACT)
    torch.manual_seed(7)
    out = loss(batch.clone())
    torch.manual_seed(7)
    td3_out = reference(batch.clone())
    for key in ("loss_qvalue", "pred_value", "next_state_value", "target_value"):
        torch.testing.assert_close(out[key], td3_out[key])

    obs, act = batch["observation"], batch["action"]
    policy_action = actor.module(obs)
    q1_actor = q(q1, obs, policy_action)
    lmbd = 1.5 / q1_actor.abs().mean().detach()
    bc = ((policy_action - act) ** 2).mean()
    expected = -lmbd * q1_actor.mean() + bc
    torch.testing.assert_close(out["loss_actor"], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["lmbd"], lmbd)
    torch.testing.assert_close(out["bc_loss"], bc.detach())
    torch.testing.assert_close(out["state_action_value_actor"], q1_actor.detach())
    assert out["state_action_value_actor"].shape == (B,)
    # lambda is a constant for the gradient: the actor's gradient is that of the expression above
    expected_grads = torch.autograd.grad(expected, list(actor.parameters()), retain_graph=True)
    actor_grads = torch.autograd.grad(out["loss_actor"], list(actor.parameters()))
    for got, want in zip(actor_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    undetached = -(1.5 / q1_actor.abs().mean()) * q1_actor.mean() + bc
    assert not torch.allclose(torch.autograd.grad(undetached, list(actor.parameters()))[0], actor_grads[0])


def test_td3bc_reductions_and_priority_weights():
    batch = make_batch(B, OBS, ACT)
    outs = {}
    for reduction in ("none", "sum", "mean"):
        torch.manual_seed(0)
        outs[reduction] = td3bc(reduction=reduction)(batch.clone())
    bc = outs["mean"]["bc_loss"]
    for key in ("loss_actor", "loss_qvalue"):
        assert outs["none"][key].shape == (B,)
        torch.testing.assert_close(outs["sum"][key], outs["none"][key].sum())
        torch.testing.assert_close(outs["mean"][key], outs["none"][key].mean())
    lmbd, q1_actor = outs["mean"]["lmbd"], outs["mean"]["state_action_value_actor"]
    torch.testing.assert_close(outs["none"]["loss_actor"], -lmbd * q1_actor + bc)
    weight = torch.rand(B)
    weighted_batch = batch.clone()
    weighted_batch["priority_weight"] = weight
    torch.manual_seed(0)
    weighted = td3bc()(weighted_batch)
    for key in ("loss_actor", "loss_qvalue"):
        torch.testing.assert_close(weighted[key], (weight * outs["none"][key]).sum() / weight.sum())


def test_td3bc_forward_terms_skips_the_actor():
    loss, batch = td3bc(), make_batch(B, OBS, ACT)
    torch.manual_seed(0)
    full = loss(batch.clone())
    torch.manual_seed(0)
    critic_only = loss.forward_terms(batch.clone(), frozenset({"loss_qvalue"}))
    assert not {"loss_actor", "bc_loss", "lmbd", "state_action_value_actor"} & set(critic_only.keys())
    torch.testing.assert_close(critic_only["loss_qvalue"], full["loss_qvalue"])


def test_td3bc_constructor_and_state_dict():
    with pytest.raises(ValueError, match="exactly one"):
        TD3BCLoss(make_det_actor(), make_qvalue(OBS, ACT))
    with pytest.raises(TypeError, match="make_value_estimator"):
        td3bc(gamma=0.9)
    spec = Bounded(-torch.ones(ACT), torch.ones(ACT))
    spec_loss = TD3BCLoss(make_det_actor(), make_qvalue(OBS, ACT), action_spec=spec)
    torch.testing.assert_close(spec_loss.max_action, torch.ones(ACT))
    assert_state_dict_round_trip(td3bc, make_batch(B, OBS, ACT))


# ---- BC -----------------------------------------------------------------------------------------
def test_bc_deterministic_actor_mse_and_gradients():
    torch.manual_seed(0)
    actor = make_det_actor()
    loss = BCLoss(actor)
    assert loss.loss_groups == {"loss_bc": "actor"} and loss.parameter_groups == ["actor"]
    assert {id(p) for p in actor.parameters()} == {id(p) for p in loss.group_parameters("actor")}
    batch = make_batch(B, OBS, ACT)
    out = loss(batch)
    expected = ((actor.module(batch["observation"]) - batch["action"]) ** 2).mean()
    torch.testing.assert_close(out["loss_bc"], expected)
    out["loss_bc"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in actor.parameters())


def test_bc_stochastic_actor_negative_log_likelihood():
    torch.manual_seed(0)
    actor = make_actor(OBS, ACT)
    batch = make_batch(B, OBS, ACT)
    out = BCLoss(actor, reduction="none")(batch)
    loc, scale = actor.module.module(batch["observation"])
    torch.testing.assert_close(out["loss_bc"], -tanh_normal_log_prob_by_hand(loc, scale, batch["action"]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["index", "index_1", "one_hot_float"])
def test_bc_categorical_actor_cross_entropy(layout):
    actor = make_categorical_actor(seed=0)
    batch = discrete_batch()
    index = batch["action"]
    batch["action"] = {"index": index, "index_1": index.unsqueeze(-1),
                       "one_hot_float": F.one_hot(index, NA).float()}[layout]
    out = BCLoss(actor)(batch)
    expected = F.cross_entropy(actor.module(batch["observation"]), index)
    torch.testing.assert_close(out["loss_bc"], expected)


@pytest.mark.parametrize("name, formula", [
    ("l1", lambda p, a: (p - a).abs()),
    ("l2", lambda p, a: (p - a) ** 2),
    ("mse", lambda p, a: (p - a) ** 2),
    ("smooth_l1", lambda p, a: torch.where((p - a).abs() < 1, 0.5 * (p - a) ** 2, (p - a).abs() - 0.5)),
])
def test_bc_string_loss_functions(name, formula):
    torch.manual_seed(0)
    actor = make_det_actor()
    batch = make_batch(B, OBS, ACT)
    batch["action"] = batch["action"] * 3  # some errors above 1, for smooth_l1's linear part
    out = BCLoss(actor, loss_function=name, reduction="none")(batch)
    torch.testing.assert_close(out["loss_bc"], formula(actor.module(batch["observation"]), batch["action"]))


def test_bc_loss_function_on_a_stochastic_actor_uses_its_mode():
    torch.manual_seed(0)
    actor = make_actor(OBS, ACT)
    batch = make_batch(B, OBS, ACT)
    out = BCLoss(actor, loss_function="l1", reduction="none")(batch)
    loc, _ = actor.module.module(batch["observation"])
    torch.testing.assert_close(out["loss_bc"], (torch.tanh(loc) - batch["action"]).abs())


def test_bc_cross_entropy_string_and_callable():
    actor = make_categorical_actor(seed=0)
    batch = discrete_batch()
    batch["action"] = batch["action"].unsqueeze(-1)
    out = BCLoss(actor, loss_function="cross_entropy")(batch)
    logits = actor.module(batch["observation"])
    torch.testing.assert_close(out["loss_bc"], F.cross_entropy(logits, batch["action"].squeeze(-1)))

    torch.manual_seed(0)
    det = make_det_actor()
    cont = make_batch(B, OBS, ACT)
    cubic = BCLoss(det, loss_function=lambda p, a: (p - a).abs() ** 3, reduction="sum")(cont)
    torch.testing.assert_close(cubic["loss_bc"], ((det.module(cont["observation"]) - cont["action"]).abs() ** 3).sum())


def _sequence_batch(pad: torch.Tensor | None = None, horizon: int = 5) -> TensorDict:
    g = torch.Generator().manual_seed(4)
    td = TensorDict({"observation": torch.randn(B, horizon, OBS, generator=g),
                     "action": torch.rand(B, horizon, ACT, generator=g) * 2 - 1}, [B, horizon])
    if pad is not None:
        td["action_is_pad"] = pad
    return td


def test_bc_pad_mask_excludes_padded_steps():
    torch.manual_seed(0)
    actor = make_det_actor()
    pad = torch.zeros(B, 5, dtype=torch.bool)
    pad[:, 3:] = True
    pad[0] = True
    batch = _sequence_batch(pad)
    elementwise = (actor.module(batch["observation"]) - batch["action"]) ** 2
    keep = ~pad
    losses = {}
    for reduction in ("mean", "sum", "none"):
        loss = BCLoss(actor, reduction=reduction)
        loss.set_keys(pad_mask="action_is_pad")
        losses[reduction] = loss(batch)["loss_bc"]
    torch.testing.assert_close(losses["mean"], elementwise[keep].mean())
    torch.testing.assert_close(losses["sum"], elementwise[keep].sum())
    assert losses["none"].shape == (int(keep.sum()) * ACT,)
    torch.testing.assert_close(losses["none"], elementwise[keep].flatten())

    unmasked = BCLoss(actor)
    unmasked.set_keys(pad_mask="action_is_pad")
    torch.testing.assert_close(unmasked(_sequence_batch())["loss_bc"], elementwise.mean())  # entry absent


def test_bc_fully_padded_batch_gives_zero_and_bad_masks_raise():
    torch.manual_seed(0)
    actor = make_det_actor()
    loss = BCLoss(actor)
    loss.set_keys(pad_mask="action_is_pad")
    out = loss(_sequence_batch(torch.ones(B, 5, dtype=torch.bool)))["loss_bc"]
    assert out.item() == 0.0
    out.backward()
    with pytest.raises(RuntimeError, match="more dimensions"):
        loss(_sequence_batch(torch.zeros(B, 5, ACT, 2, dtype=torch.bool)))
    nll = BCLoss(make_actor(OBS, ACT))  # one log-likelihood per sample: no per-action-dim mask
    nll.set_keys(pad_mask="action_is_pad")
    batch = make_batch(B, OBS, ACT)
    batch["action_is_pad"] = torch.zeros(B, ACT, dtype=torch.bool)
    with pytest.raises(RuntimeError, match="more dimensions"):
        nll(batch)


def test_bc_collector_mask_is_honoured_and_can_be_disabled():
    torch.manual_seed(0)
    actor = make_det_actor()
    batch = make_batch(B, OBS, ACT)
    valid = torch.arange(B) % 3 != 0
    batch["collector", "mask"] = valid
    elementwise = (actor.module(batch["observation"]) - batch["action"]) ** 2
    torch.testing.assert_close(BCLoss(actor)(batch)["loss_bc"], elementwise[valid].mean())
    per_element = BCLoss(actor, reduction="none")(batch)["loss_bc"]
    torch.testing.assert_close(per_element, elementwise * valid.unsqueeze(-1))  # shape kept, zeros
    ignoring = BCLoss(actor)
    ignoring.loss_mask_key = None
    torch.testing.assert_close(ignoring(batch)["loss_bc"], elementwise.mean())


def test_bc_keys_and_prediction_lookup():
    torch.manual_seed(0)
    actor = make_det_actor()
    batch = make_batch(B, OBS, ACT)
    batch["expert"] = batch["action"] * 0.5
    loss = BCLoss(actor)
    with pytest.raises(ValueError, match="unknown key"):
        loss.set_keys(not_a_key="x")
    loss.set_keys(action="expert")
    with pytest.warns(FutureWarning, match="writes its prediction at 'action'"):
        out = loss(batch)
    torch.testing.assert_close(out["loss_bc"], ((actor.module(batch["observation"]) - batch["expert"]) ** 2).mean())
    renamed = Actor(nn.Sequential(MLP(OBS, ACT, (16,)), nn.Tanh()), out_keys=["expert"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_renamed = BCLoss(renamed)
        loss_renamed.set_keys(action="expert")
        loss_renamed(batch)
    elsewhere = Actor(MLP(OBS, ACT), out_keys=["other"])
    with pytest.raises(RuntimeError, match="did not write a prediction"):
        BCLoss(elsewhere)(batch)
    wrong_shape = batch.clone()
    wrong_shape["action"] = torch.zeros(B, ACT + 1)
    with pytest.raises(RuntimeError, match="shapes differ"):
        BCLoss(actor)(wrong_shape)


def test_bc_constructor_errors_and_state_dict():
    with pytest.raises(ValueError, match="loss_function"):
        BCLoss(make_det_actor(), loss_function="huber")
    with pytest.raises(ValueError, match="reduction"):
        BCLoss(make_det_actor(), reduction="median")
    with pytest.raises(TypeError, match="TensorDict actor"):
        BCLoss(MLP(OBS, ACT))

    def build():
        torch.manual_seed(0)
        return BCLoss(make_actor(OBS, ACT))

    assert_state_dict_round_trip(build, make_batch(B, OBS, ACT))
