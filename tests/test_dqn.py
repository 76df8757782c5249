"""DQNLoss / DistributionalDQNLoss (C51) and the greedy actors: actors' outputs, the spec's formulas
recomputed by hand, the C51 projection on a hand-worked example, gradients, targets, keys, errors."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from tensordict import TensorDict
from tensordict.nn import TensorDictModule
from torch import nn

from rltrain.modules import MLP, Bounded, Categorical, OneHot
from rltrain.modules.qvalue import DistributionalQValueActor, QValueActor
from rltrain.objectives.dqn import DistributionalDQNLoss, DQNLoss
from rltrain.updaters import HardUpdate, SoftUpdate
from tests.helpers import make_batch

OBS, NA, ATOMS, B = 3, 4, 5, 12
SPACES = ["one_hot", "categorical"]


def discrete_batch(action_space: str, batch: int = B, seed: int = 0) -> TensorDict:
    """The data contract with discrete actions: an int64 index ``[B]`` or a one-hot ``[B, nA]``."""
    td = make_batch(batch, OBS, 1, seed=seed)
    index = torch.randint(NA, (batch,), generator=torch.Generator().manual_seed(seed + 1))
    td["action"] = index if action_space == "categorical" else F.one_hot(index, NA)
    return td


def action_index(batch: TensorDict) -> torch.Tensor:
    action = batch["action"]
    return action if action.dim() == 1 else action.argmax(-1)


def q_actor(action_space: str = "categorical", seed: int = 0) -> QValueActor:
    torch.manual_seed(seed)
    return QValueActor(MLP(OBS, NA, (16,)), action_space=action_space)


def c51_actor(action_space: str = "categorical", seed: int = 0, atoms: int = ATOMS,
              v_min: float = -2.0, v_max: float = 2.0) -> DistributionalQValueActor:
    torch.manual_seed(seed)
    return DistributionalQValueActor(MLP(OBS, NA * atoms, (16,)), torch.linspace(v_min, v_max, atoms),
                                     action_space=action_space)


def perturb_(module: nn.Module, scale: float = 0.3, seed: int = 5) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))


def unpack(batch: TensorDict):
    """obs, next obs, reward [B], (1 - terminated) [B] as floats."""
    not_term = 1.0 - batch["next", "terminated"].squeeze(-1).float()
    return batch["observation"], batch["next", "observation"], batch["next", "reward"].squeeze(-1), not_term


def grads(module: nn.Module) -> list[bool]:
    return [p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters()]


# ---- QValueActor ----------------------------------------------------------------------------------

@pytest.mark.parametrize("action_space", SPACES)
def test_qvalue_actor_writes_values_greedy_action_and_max(action_space):
    actor = q_actor(action_space)
    td = actor(TensorDict({"observation": torch.randn(B, OBS)}, [B]))
    q = actor.module(td["observation"])
    torch.testing.assert_close(td["action_value"], q)
    torch.testing.assert_close(td["chosen_action_value"], q.max(-1, keepdim=True).values)
    if action_space == "categorical":
        assert td["action"].dtype == torch.long and torch.equal(td["action"], q.argmax(-1))
    else:
        assert torch.equal(td["action"], F.one_hot(q.argmax(-1), NA))
    assert torch.equal(actor.act(td["observation"]), td["action"])
    assert torch.equal(actor.action_values(td["observation"]), q)


def test_qvalue_actor_action_space_from_spec_or_warns():
    assert QValueActor(MLP(OBS, NA), spec=Categorical(NA)).action_space == "categorical"
    assert QValueActor(MLP(OBS, NA), action_space=OneHot(NA)).action_space == "one_hot"
    assert QValueActor(MLP(OBS, NA), action_space="one-hot").action_space == "one_hot"
    with pytest.warns(UserWarning, match="assuming one-hot"):
        assert QValueActor(MLP(OBS, NA)).action_space == "one_hot"
    with pytest.raises(ValueError, match="accepted"):
        QValueActor(MLP(OBS, NA), action_space="discrete")
    with pytest.raises(ValueError, match="not supported"):  # C51's actor takes single-choice actions only
        DistributionalQValueActor(MLP(OBS, NA * ATOMS), torch.linspace(-1.0, 1.0, ATOMS), action_space="binary")
    with pytest.raises(TypeError, match="discrete action space"):
        QValueActor(MLP(OBS, NA), action_space=Bounded(-1.0, 1.0, (2,)))


def test_qvalue_actor_wraps_a_tensordict_module():
    net = TensorDictModule(MLP(OBS, NA, (8,)), in_keys=["obs"], out_keys=["q"])
    actor = QValueActor(net, action_space="categorical")
    assert actor.in_keys == ["obs"]
    td = actor(TensorDict({"obs": torch.randn(B, OBS)}, [B]))
    torch.testing.assert_close(td["action_value"], net.module(td["obs"]))


# ---- DistributionalQValueActor --------------------------------------------------------------------

class FixedLogits(nn.Module):
    """Ignores the observation and returns fixed logits (atom-major, ``[N * nA]``)."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = nn.Parameter(logits.flatten())

    def forward(self, obs):
        return self.logits.expand(*obs.shape[:-1], -1)


def test_distributional_actor_normalises_over_atoms():
    actor = c51_actor()
    obs = torch.randn(B, OBS)
    log_probs = actor.log_probs(obs)
    assert log_probs.shape == (B, ATOMS, NA)
    torch.testing.assert_close(log_probs.exp().sum(-2), torch.ones(B, NA))
    expected = actor.module(obs).view(B, ATOMS, NA).log_softmax(-2)  # entry i * nA + a is atom i of action a
    torch.testing.assert_close(log_probs, expected)
    assert "support" in dict(actor.named_buffers()) and "support" not in dict(actor.named_parameters())


@pytest.mark.parametrize("action_space", SPACES)
def test_distributional_greedy_action_maximises_expected_value(action_space):
    # Support [-1, 0, 1]. Action 0 has the most likely single atom (0.8 on z=0) but expected value 0;
    # action 1 puts 0.6 on z=1 and 0.4 on z=-1: expected value 0.2, the largest; action 2 is -0.5.
    probs = torch.tensor([[0.1, 0.4, 0.75],
                          [0.8, 0.0, 0.00],
                          [0.1, 0.6, 0.25]])  # [atoms, actions]
    logits = probs.clamp_min(1e-12).log()
    actor = DistributionalQValueActor(FixedLogits(logits), torch.tensor([-1.0, 0.0, 1.0]), action_space=action_space)
    obs = torch.randn(2, OBS)
    torch.testing.assert_close(actor.action_values(obs), torch.tensor([0.0, 0.2, -0.5]).expand(2, 3))
    td = actor(TensorDict({"observation": obs}, [2]))
    expected = torch.tensor([1, 1])
    if action_space == "one_hot":
        expected = F.one_hot(expected, 3)
    assert torch.equal(td["action"], expected)
    assert torch.equal(actor.act(obs), expected)
    assert td["action_value"].shape == (2, 3, 3)


def test_distributional_actor_rejects_bad_supports_and_outputs():
    with pytest.raises(ValueError, match="Vmin < Vmax"):
        DistributionalQValueActor(MLP(OBS, NA * 3), torch.linspace(1.0, -1.0, 3), action_space="categorical")
    with pytest.raises(ValueError, match="Vmin < Vmax"):
        DistributionalQValueActor(MLP(OBS, NA * 3), torch.zeros(3), action_space="categorical")
    with pytest.raises(ValueError, match="evenly spaced"):
        DistributionalQValueActor(MLP(OBS, NA * 3), torch.tensor([-1.0, 0.5, 1.0]), action_space="categorical")
    with pytest.raises(ValueError, match="1-D"):
        DistributionalQValueActor(MLP(OBS, NA * 3), torch.tensor([1.0]), action_space="categorical")
    actor = DistributionalQValueActor(MLP(OBS, 7), torch.linspace(-1, 1, 3), action_space="categorical")
    with pytest.raises(ValueError, match="multiple"):
        actor.log_probs(torch.randn(2, OBS))


# ---- DQNLoss ---------------------------------------------------------------------------------------

def dqn_case(action_space: str, delay_value: bool, double_dqn: bool, **kwargs):
    """A loss whose online network has moved away from its (delayed) target, and a copy of the
    target network's weights to recompute the formulas with."""
    actor = q_actor(action_space)
    loss = DQNLoss(actor, delay_value=delay_value, double_dqn=double_dqn, **kwargs)
    original = copy.deepcopy(actor.module)
    perturb_(actor)
    return loss, actor.module, (original if delay_value else actor.module)


DQN_COMBOS = [(s, delay, double) for s in SPACES for delay in (False, True) for double in (False, True)
              if delay or not double]


@pytest.mark.parametrize("action_space,delay_value,double_dqn", DQN_COMBOS)
def test_dqn_loss_matches_the_spec_formula(action_space, delay_value, double_dqn):
    loss, online, target_net = dqn_case(action_space, delay_value, double_dqn)
    loss.make_value_estimator(gamma=0.9)
    batch = discrete_batch(action_space)
    out = loss(batch.clone())
    assert list(out.keys()) == ["loss"]

    obs, next_obs, reward, not_term = unpack(batch)
    a = action_index(batch)
    with torch.no_grad():
        q_next = target_net(next_obs)
        if double_dqn:
            next_value = q_next.gather(-1, online(next_obs).argmax(-1, keepdim=True)).squeeze(-1)
        else:
            next_value = q_next.max(-1).values
        y = reward + 0.9 * not_term * next_value
        pred = online(obs)[torch.arange(B), a]
    torch.testing.assert_close(out["loss"], ((pred - y) ** 2).mean())


def test_double_dqn_differs_from_dqn_once_target_lags():
    batch = discrete_batch("categorical")
    plain, _, _ = dqn_case("categorical", True, False)
    double, _, _ = dqn_case("categorical", True, True)
    assert not torch.allclose(plain(batch.clone())["loss"], double(batch.clone())["loss"])


@pytest.mark.parametrize("action_space", SPACES)
def test_dqn_gradient_reaches_only_the_online_network(action_space):
    loss, _, _ = dqn_case(action_space, True, True)
    assert loss.loss_groups == {"loss": "value"}
    assert loss.parameter_groups == ["value"]
    loss(discrete_batch(action_space))["loss"].backward()
    assert all(grads(loss.value_network))
    assert {id(p) for p in loss.parameters()} == {id(p) for p in loss.group_parameters("value")}
    assert all(b.grad is None and not b.requires_grad for b in loss.target_value_network.buffers())


def test_dqn_uses_the_actors_own_parameters():
    actor = q_actor()
    loss = DQNLoss(actor)
    assert loss.value_network is actor
    assert {id(p) for p in actor.parameters()} == {id(p) for p in loss.group_parameters("value")}


def test_dqn_wraps_a_plain_module_and_warns_without_action_space():
    net = MLP(OBS, NA, (16,))
    with pytest.warns(UserWarning, match="assuming one-hot"):
        loss = DQNLoss(net)
    assert isinstance(loss.value_network, QValueActor) and loss.value_network.module is net
    assert loss.action_space == "one_hot"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DQNLoss(MLP(OBS, NA), action_space="categorical").action_space == "categorical"


def test_dqn_targets_delayed_or_aliased():
    loss, _, _ = dqn_case("categorical", True, False)
    before = [t.clone() for t in loss.target_value_network.buffers()]
    perturb_(loss.value_network, seed=9)
    assert all(torch.equal(a, b) for a, b in zip(before, loss.target_value_network.buffers()))
    assert not any(n.startswith("target_") for n, _ in loss.named_parameters())

    aliased, _, _ = dqn_case("categorical", False, False)
    assert aliased.target_value_network is aliased.value_network
    with pytest.raises(RuntimeError, match="no target networks"):
        SoftUpdate(aliased, tau=0.1)


def test_dqn_updaters_move_the_target():
    loss, online, _ = dqn_case("categorical", True, False)
    # The updater's construction hard-copies online -> target.
    HardUpdate(loss, value_network_update_interval=10)
    for t, p in zip(loss.target_value_network.buffers(), loss.value_network.parameters()):
        assert torch.equal(t, p)


def test_dqn_categorical_action_with_trailing_dim_is_the_same():
    loss, _, _ = dqn_case("categorical", True, False)
    batch = discrete_batch("categorical")
    flat = loss(batch.clone())["loss"]
    batch["action"] = batch["action"].unsqueeze(-1)
    torch.testing.assert_close(loss(batch)["loss"], flat)


def test_dqn_one_hot_loss_rejects_index_actions():
    loss, _, _ = dqn_case("one_hot", True, False)
    batch = discrete_batch("categorical", batch=NA)  # [B] == [nA]: would broadcast silently
    with pytest.raises(ValueError, match="categorical"):
        loss(batch)


def test_dqn_truncated_bootstraps_terminated_does_not():
    loss, _, _ = dqn_case("categorical", True, False)
    batch = discrete_batch("categorical")
    batch["next", "terminated"][:] = False
    batch["next", "truncated"][:] = True
    truncated = loss(batch.clone())["loss"]
    batch["next", "truncated"][:] = False
    running = loss(batch.clone())["loss"]
    batch["next", "terminated"][:] = True
    terminal = loss(batch.clone())["loss"]
    assert torch.equal(truncated, running) and not torch.allclose(terminal, running)


def test_dqn_n_step_discount():
    loss, _, target_net = dqn_case("categorical", True, False)
    batch = discrete_batch("categorical")
    batch["steps_to_next_obs"] = torch.full((B, 1), 3)
    out = loss(batch.clone())
    obs, next_obs, reward, not_term = unpack(batch)
    with torch.no_grad():
        y = reward + 0.99 ** 3 * not_term * target_net(next_obs).max(-1).values
        pred = loss.value_network.module(obs)[torch.arange(B), batch["action"]]
    torch.testing.assert_close(out["loss"], ((pred - y) ** 2).mean())


@pytest.mark.parametrize("loss_function", ["l1", "smooth_l1"])
def test_dqn_other_distances(loss_function):
    loss, online, target_net = dqn_case("categorical", True, False, reduction="none", loss_function=loss_function)
    batch = discrete_batch("categorical")
    per_sample = loss(batch.clone())["loss"]
    obs, next_obs, reward, not_term = unpack(batch)
    with torch.no_grad():
        y = reward + 0.99 * not_term * target_net(next_obs).max(-1).values
        error = (online(obs)[torch.arange(B), batch["action"]] - y).abs()
    expected = error if loss_function == "l1" else torch.where(error < 1, 0.5 * error**2, error - 0.5)
    torch.testing.assert_close(per_sample, expected)


def test_dqn_reductions_and_priority_weights():
    batch = discrete_batch("categorical")
    outs = {r: dqn_case("categorical", True, True, reduction=r)[0](batch.clone())["loss"]
            for r in ("none", "sum", "mean")}
    assert outs["none"].shape == (B,)
    torch.testing.assert_close(outs["sum"], outs["none"].sum())
    torch.testing.assert_close(outs["mean"], outs["none"].mean())
    weight = torch.rand(B, generator=torch.Generator().manual_seed(3))
    batch["priority_weight"] = weight
    weighted = dqn_case("categorical", True, True)[0](batch.clone())["loss"]
    torch.testing.assert_close(weighted, (weight * outs["none"]).sum() / weight.sum())
    ignored = dqn_case("categorical", True, True, use_prioritized_weights=False)[0](batch.clone())["loss"]
    torch.testing.assert_close(ignored, outs["mean"])


def test_dqn_priority_written_and_inputs_kept():
    loss, online, target_net = dqn_case("categorical", True, False)
    batch = discrete_batch("categorical")
    before = batch.clone()
    loss(batch)
    obs, next_obs, reward, not_term = unpack(before)
    with torch.no_grad():
        y = reward + 0.99 * not_term * target_net(next_obs).max(-1).values
        pred = online(obs)[torch.arange(B), before["action"]]
    assert batch["td_error"].shape == (B, 1) and not batch["td_error"].requires_grad
    torch.testing.assert_close(batch["td_error"].squeeze(-1), (pred - y) ** 2)
    for key in before.keys(include_nested=True, leaves_only=True):
        assert torch.equal(before[key], batch[key]), key


def test_dqn_set_keys():
    loss, _, _ = dqn_case("categorical", True, False)
    with pytest.raises(ValueError, match="unknown key 'not_a_key'"):
        loss.set_keys(not_a_key="x")
    loss.set_keys(priority="my_priority", action="act", reward="rew")
    batch = discrete_batch("categorical").rename_key_("action", "act")
    batch.rename_key_(("next", "reward"), ("next", "rew"))
    loss(batch)
    assert "my_priority" in batch.keys()
    loss.set_keys(priority=None)
    assert loss.tensor_keys.priority == "td_error"


def test_dqn_constructor_errors():
    with pytest.raises(ValueError, match="double_dqn=True needs delay_value=True"):
        DQNLoss(q_actor(), double_dqn=True, delay_value=False)
    with pytest.raises(TypeError, match="make_value_estimator"):
        DQNLoss(q_actor(), gamma=0.9)
    with pytest.raises(TypeError, match="set_keys"):
        DQNLoss(q_actor(), priority_key="p")
    with pytest.raises(ValueError, match="loss_function"):
        DQNLoss(q_actor(), loss_function="huber")
    with pytest.raises(ValueError, match="reduction"):
        DQNLoss(q_actor(), reduction="median")
    with pytest.raises(ValueError, match="action_space"):
        DQNLoss(q_actor(), action_space="discrete")
    with pytest.raises(TypeError, match="DistributionalDQNLoss"):
        DQNLoss(c51_actor())
    with pytest.raises(TypeError, match="QValueActor"):
        DQNLoss("not a network")
    with pytest.raises(ValueError, match="value estimators"):
        DQNLoss(q_actor()).make_value_estimator("gae")


def test_dqn_state_dict_round_trip():
    a, _, _ = dqn_case("categorical", True, True)
    b = DQNLoss(q_actor(seed=1), double_dqn=True)
    b.load_state_dict(a.state_dict())
    batch = discrete_batch("categorical")
    torch.testing.assert_close(a(batch.clone())["loss"], b(batch.clone())["loss"], rtol=0, atol=0)


# ---- C51: the projection ----------------------------------------------------------------------------

def three_atom_loss() -> DistributionalDQNLoss:
    """Support z = [-1, 0, 1]: Vmin = -1, Vmax = 1, dz = 1."""
    actor = DistributionalQValueActor(MLP(OBS, NA * 3, (8,)), torch.linspace(-1.0, 1.0, 3), action_space="categorical")
    return DistributionalDQNLoss(actor, gamma=0.5)


def test_c51_projection_hand_worked():
    loss = three_atom_loss()
    p = torch.tensor([0.2, 0.3, 0.5]).expand(4, 3)
    reward = torch.tensor([[0.5], [0.25], [-1.0], [2.0]])
    terminated = torch.tensor([[False], [False], [True], [True]])
    discount = torch.tensor([[0.5], [1.0], [0.5], [0.5]])
    m = loss.project(p, reward, terminated, discount)
    expected = torch.tensor([
        # r=0.5, gamma=0.5: Tz = 0.5 + 0.5 z = [0, 0.5, 1], b = Tz + 1 = [1, 1.5, 2]
        #   atom 0: b=1 on an atom, l=u=1 -> l=0:  m0 += 0.2*(1-1) = 0,     m1 += 0.2*(1-0) = 0.2
        #   atom 1: b=1.5, l=1, u=2:              m1 += 0.3*0.5 = 0.15,    m2 += 0.3*0.5 = 0.15
        #   atom 2: b=2 = N-1, l=u=2 -> l=1:      m1 += 0.5*(2-2) = 0,     m2 += 0.5*(2-1) = 0.5
        #   (the mean is kept: 0.65 = 0.5 + 0.5 * (-0.2 + 0.5))
        [0.0, 0.35, 0.65],
        # r=0.25, gamma=1: Tz = [-0.75, 0.25, 1.25 -> clamped to 1], b = [0.25, 1.25, 2]
        #   atom 0: l=0, u=1:  m0 += 0.2*0.75 = 0.15,  m1 += 0.2*0.25 = 0.05
        #   atom 1: l=1, u=2:  m1 += 0.3*0.75 = 0.225, m2 += 0.3*0.25 = 0.075
        #   atom 2: b=2 -> l=1, u=2: m2 += 0.5
        [0.15, 0.275, 0.575],
        # terminated, r=-1: Tz = -1 for every atom, b = 0, l=u=0 -> (u=0, so l stays) u=1:
        #   m0 += p*(1-0) for every atom = 1, m1 += p*0 = 0  (the lower boundary)
        [1.0, 0.0, 0.0],
        # terminated, r=2: Tz = 2 clamped to Vmax = 1, b = 2, l=u=2 -> l=1: m2 += p*(2-1) = 1  (upper boundary)
        [0.0, 0.0, 1.0],
    ])
    torch.testing.assert_close(m, expected)


def reference_projection(p, reward, terminated, gamma, support):
    """The spec's projection written with Python loops, one sample and one atom at a time."""
    n = support.numel()
    v_min, v_max = support[0].item(), support[-1].item()
    dz = (v_max - v_min) / (n - 1)
    m = torch.zeros_like(p)
    for row in range(p.shape[0]):
        for i in range(n):
            tz = reward[row].item() + (0.0 if terminated[row].item() else gamma * support[i].item())
            b = (min(max(tz, v_min), v_max) - v_min) / dz
            lo, up = int(torch.tensor(b).floor()), int(torch.tensor(b).ceil())
            if lo == up and up > 0:
                lo -= 1
            if lo == up and lo < n - 1:
                up += 1
            m[row, lo] += p[row, i] * (up - b)
            m[row, up] += p[row, i] * (b - lo)
    return m


def test_c51_projection_matches_the_loop_reference():
    actor = c51_actor(atoms=11, v_min=-5.0, v_max=5.0)
    loss = DistributionalDQNLoss(actor, gamma=0.9)
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(64, 11, generator=g), -1)
    # Rewards on a 0.5 grid put many Tz exactly on atoms and at both clamps.
    reward = (torch.randint(-14, 15, (64, 1), generator=g) * 0.5)
    terminated = torch.rand(64, 1, generator=g) < 0.3
    m = loss.project(p, reward, terminated, torch.tensor(0.9))
    torch.testing.assert_close(m, reference_projection(p, reward, terminated, 0.9, actor.support))
    torch.testing.assert_close(m.sum(-1), torch.ones(64))


# ---- C51: the loss ----------------------------------------------------------------------------------

def c51_case(action_space: str, delay_value: bool, **kwargs):
    actor = c51_actor(action_space)
    loss = DistributionalDQNLoss(actor, gamma=kwargs.pop("gamma", 0.9), delay_value=delay_value, **kwargs)
    original = copy.deepcopy(actor.module)
    perturb_(actor)
    return loss, actor.module, (original if delay_value else actor.module)


@pytest.mark.parametrize("action_space", SPACES)
@pytest.mark.parametrize("delay_value", [True, False])
def test_c51_loss_matches_the_spec(action_space, delay_value):
    loss, online, target_net = c51_case(action_space, delay_value)
    batch = discrete_batch(action_space)
    out = loss(batch.clone())
    assert list(out.keys()) == ["loss"]

    support = loss.value_network.support
    obs, next_obs, reward, not_term = unpack(batch)
    a = action_index(batch)
    with torch.no_grad():
        online_next = online(next_obs).view(B, ATOMS, NA).softmax(-2)
        best = (online_next * support[:, None]).sum(-2).argmax(-1)           # double-Q: online chooses
        target_next = target_net(next_obs).view(B, ATOMS, NA).softmax(-2)
        p_next = target_next[torch.arange(B), :, best]                        # target evaluates
        m = reference_projection(p_next, reward, 1 - not_term, 0.9, support)
        log_p = online(obs).view(B, ATOMS, NA).log_softmax(-2)[torch.arange(B), :, a]
        expected = -(m * log_p).sum(-1)
    torch.testing.assert_close(out["loss"], expected.mean(), rtol=1e-5, atol=1e-6)


def test_c51_target_network_matters_only_when_delayed():
    batch = discrete_batch("categorical")
    delayed, _, _ = c51_case("categorical", True)
    online_only, _, _ = c51_case("categorical", False)
    assert not torch.allclose(delayed(batch.clone())["loss"], online_only(batch.clone())["loss"])


def test_c51_gradient_and_targets():
    loss, _, _ = c51_case("categorical", True)
    assert loss.loss_groups == {"loss": "value"}
    loss(discrete_batch("categorical"))["loss"].backward()
    assert all(grads(loss.value_network))
    target = loss.target_value_network
    assert all(b.grad is None and not b.requires_grad for b in target.buffers())
    before = {n: t.clone() for n, t in target.named_buffers() if n != "support"}
    perturb_(loss.value_network, seed=11)
    assert all(torch.equal(before[n], t) for n, t in target.named_buffers() if n != "support")

    aliased, _, _ = c51_case("categorical", False)
    assert aliased.target_value_network is aliased.value_network


def test_c51_gamma_is_a_buffer_and_n_step_discounts():
    loss, _, _ = c51_case("categorical", True, gamma=0.8)
    assert "gamma" in dict(loss.named_buffers()) and loss.gamma.item() == pytest.approx(0.8)
    batch = discrete_batch("categorical")
    one_step = loss(batch.clone())["loss"]
    batch["steps_to_next_obs"] = torch.ones(B, 1, dtype=torch.long)
    torch.testing.assert_close(loss(batch.clone())["loss"], one_step)
    batch["steps_to_next_obs"] = torch.full((B, 1), 3)
    three_step = loss(batch.clone())["loss"]
    del batch["steps_to_next_obs"]
    loss.make_value_estimator(gamma=0.8**3)
    torch.testing.assert_close(loss(batch.clone())["loss"], three_step)


def test_c51_reductions_priority_and_weights():
    batch = discrete_batch("one_hot")
    outs = {r: c51_case("one_hot", True, reduction=r)[0](batch.clone())["loss"] for r in ("none", "sum", "mean")}
    assert outs["none"].shape == (B,)
    torch.testing.assert_close(outs["sum"], outs["none"].sum())
    torch.testing.assert_close(outs["mean"], outs["none"].mean())
    weighted_batch = batch.clone()
    weight = torch.rand(B, generator=torch.Generator().manual_seed(3))
    weighted_batch["priority_weight"] = weight
    weighted = c51_case("one_hot", True)[0](weighted_batch)["loss"]
    torch.testing.assert_close(weighted, (weight * outs["none"]).sum() / weight.sum())
    assert weighted_batch["td_error"].shape == (B, 1)
    torch.testing.assert_close(weighted_batch["td_error"].squeeze(-1), outs["none"].detach())


def test_c51_nan_next_observation_on_terminated_rows_is_harmless():
    loss, _, _ = c51_case("categorical", True)
    batch = discrete_batch("categorical")
    terminated = batch["next", "terminated"].squeeze(-1)
    clean = loss(batch.clone())["loss"]
    batch["next", "observation"][terminated] = float("nan")
    dirty = loss(batch.clone())["loss"]
    assert torch.isfinite(dirty)
    torch.testing.assert_close(dirty, clean)


def test_c51_non_finite_reward_raises():
    loss, _, _ = c51_case("categorical", True)
    batch = discrete_batch("categorical")
    batch["next", "reward"][0] = float("inf")
    with pytest.raises(RuntimeError, match="non-finite"):
        loss(batch)


def test_c51_needs_a_flat_batch():
    loss, _, _ = c51_case("categorical", True)
    with pytest.raises(RuntimeError, match="1-D batch"):
        loss(discrete_batch("categorical").reshape(3, 4))


def test_c51_set_keys():
    loss, _, _ = c51_case("categorical", True)
    with pytest.raises(ValueError, match="unknown key 'not_a_key'"):
        loss.set_keys(not_a_key="x")
    loss.set_keys(priority="p", steps_to_next_obs="n")
    batch = discrete_batch("categorical")
    loss(batch)
    assert "p" in batch.keys()


def test_c51_constructor_errors():
    actor = c51_actor()
    with pytest.raises(TypeError):
        DistributionalDQNLoss(actor)  # gamma is required
    with pytest.raises(ValueError, match="gamma"):
        DistributionalDQNLoss(actor, gamma=1.5)
    with pytest.raises(TypeError, match="DistributionalQValueActor"):
        DistributionalDQNLoss(q_actor(), gamma=0.9)
    with pytest.raises(TypeError, match="set_keys"):
        DistributionalDQNLoss(actor, gamma=0.9, priority_key="p")
    with torch.no_grad():
        actor.support.copy_(torch.linspace(1.0, -1.0, ATOMS))  # Vmin >= Vmax
    with pytest.raises(ValueError, match="Vmin < Vmax"):
        DistributionalDQNLoss(actor, gamma=0.9)
