"""SoftUpdate and HardUpdate: exact arithmetic, argument rules, period, state."""

from __future__ import annotations

import pytest
import torch

from rltrain.objectives import SACLoss
from rltrain.updaters import HardUpdate, SoftUpdate
from tests.helpers import make_actor, make_qvalue


def loss_module(**kwargs) -> SACLoss:
    torch.manual_seed(0)
    return SACLoss(make_actor(3, 2), make_qvalue(3, 2), **kwargs)


def perturb_online(loss: SACLoss, amount: float = 1.0) -> None:
    with torch.no_grad():
        for p in loss.qvalue_network.parameters():
            p.add_(amount * torch.randn_like(p))


def test_construction_hard_copies_online_into_targets():
    loss = loss_module()
    perturb_online(loss)
    SoftUpdate(loss, tau=0.005)
    sources, targets = loss.target_pairs()
    assert all(torch.equal(s, t) for s, t in zip(sources, targets))


def test_soft_update_moves_exactly_tau_towards_online():
    loss = loss_module()
    updater = SoftUpdate(loss, tau=0.1)
    perturb_online(loss)
    sources, targets = loss.target_pairs()
    before = [t.clone() for t in targets]
    updater.step()
    for s, t_old, t_new in zip(sources, before, targets):
        torch.testing.assert_close(t_new, t_old + 0.1 * (s - t_old), rtol=0, atol=1e-6)


def test_eps_is_one_minus_tau():
    a, b = loss_module(), loss_module()
    soft_tau, soft_eps = SoftUpdate(a, tau=0.005), SoftUpdate(b, eps=0.995)
    assert soft_eps.tau == pytest.approx(0.005) and soft_tau.eps == pytest.approx(0.995)
    for loss in (a, b):
        torch.manual_seed(1)
        perturb_online(loss)
    soft_tau.step()
    soft_eps.step()
    for t_a, t_b in zip(a.target_pairs()[1], b.target_pairs()[1]):
        torch.testing.assert_close(t_a, t_b)


def test_soft_update_argument_rules():
    loss = loss_module()
    with pytest.raises(ValueError, match="not both"):
        SoftUpdate(loss, tau=0.005, eps=0.995)
    with pytest.raises(RuntimeError, match="needs tau"):
        SoftUpdate(loss)
    with pytest.raises(ValueError, match="0 <= tau <= 1"):
        SoftUpdate(loss, tau=1.5)
    with pytest.warns(UserWarning, match="probably meant tau=0.005"):
        SoftUpdate(loss, eps=0.005)


def test_hard_update_copies_on_exactly_every_nth_step():
    loss = loss_module()
    updater = HardUpdate(loss, value_network_update_interval=3)
    copied_at = []
    for step in range(1, 10):
        perturb_online(loss)
        updater.step()
        sources, targets = loss.target_pairs()
        if all(torch.equal(s, t) for s, t in zip(sources, targets)):
            copied_at.append(step)
    assert copied_at == [3, 6, 9]


def test_hard_update_state_round_trip():
    loss = loss_module()
    updater = HardUpdate(loss, value_network_update_interval=4)
    updater.step()
    updater.step()
    other = HardUpdate(loss, value_network_update_interval=4)
    other.load_state_dict(updater.state_dict())
    assert other.counter == 2
    with pytest.raises(ValueError, match=">= 1"):
        HardUpdate(loss, value_network_update_interval=0)


def test_updater_needs_a_loss_module():
    with pytest.raises(ValueError, match="LossModule"):
        SoftUpdate(torch.nn.Linear(2, 2), tau=0.1)


def test_delayed_actor_target_is_tracked():
    loss = loss_module(delay_actor=True)
    SoftUpdate(loss, tau=0.5).step()
    sources, _ = loss.target_pairs()
    actor_ids = {id(p) for p in loss.actor_network.parameters()}
    assert actor_ids <= {id(s) for s in sources}


def test_pairs_follow_device_or_dtype_moves():
    loss = loss_module()
    updater = SoftUpdate(loss, tau=0.5)
    loss.double()
    perturb_online(loss)
    updater.step()
    sources, targets = loss.target_pairs()
    assert all(t.dtype == torch.float64 for t in targets)
    assert all(not torch.equal(s, t) for s, t in zip(sources, targets))
