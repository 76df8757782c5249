"""The hot-path optimizer helpers do exactly what torch.optim and torch.nn.utils do."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rltrain.optim import FusedAdamStep, clip_grad_norm_, zero_grads


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def _backward(net: nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    x = torch.randn(32, 5, generator=generator)
    zero_grads(list(net.parameters()))
    net(x).pow(2).mean().backward()


def _twins(cls=torch.optim.Adam, **kwargs):
    """Two identical nets with a fused optimizer each; the first is stepped through FusedAdamStep."""
    ours, reference = _net(), _net()
    opt_ours = cls(ours.parameters(), lr=1e-2, fused=True, **kwargs)
    opt_ref = cls(reference.parameters(), lr=1e-2, fused=True, **kwargs)
    return ours, reference, opt_ours, opt_ref, FusedAdamStep(opt_ours)


def _same_parameters(a: nn.Module, b: nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@pytest.mark.parametrize("cls,weight_decay", [(torch.optim.Adam, 0.0), (torch.optim.Adam, 0.1),
                                              (torch.optim.AdamW, 0.01)])
def test_fused_step_is_bitwise_torch_step_with_a_schedule(cls, weight_decay):
    ours, reference, opt_ours, opt_ref, step = _twins(cls, weight_decay=weight_decay)
    sched_ours = torch.optim.lr_scheduler.LinearLR(opt_ours, 1.0, 0.1, total_iters=10)
    sched_ref = torch.optim.lr_scheduler.LinearLR(opt_ref, 1.0, 0.1, total_iters=10)
    for i in range(12):
        _backward(ours, i)
        _backward(reference, i)
        step()
        opt_ref.step()
        sched_ours.step()
        sched_ref.step()
        assert _same_parameters(ours, reference), f"step {i}"
    assert step._lists is not None, "after the first step the kernel is called directly"
    state_ours, state_ref = opt_ours.state_dict()["state"], opt_ref.state_dict()["state"]
    for k in state_ref:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(state_ours[k][name], state_ref[k][name])


def test_fused_step_follows_load_state_dict():
    ours, reference, opt_ours, opt_ref, step = _twins()
    for i in range(3):
        _backward(ours, i)
        step()
    # Restore a different history into both: the cached state lists must be the loaded ones.
    donor = _net(1)
    opt_donor = torch.optim.Adam(donor.parameters(), lr=1e-2, fused=True)
    for i in range(5):
        _backward(donor, 100 + i)
        opt_donor.step()
    for net, opt in ((ours, opt_ours), (reference, opt_ref)):
        net.load_state_dict(donor.state_dict())
        opt.load_state_dict(copy.deepcopy(opt_donor.state_dict()))
    for i in range(3):
        _backward(ours, 200 + i)
        _backward(reference, 200 + i)
        step()
        opt_ref.step()
        assert _same_parameters(ours, reference)
    assert float(opt_ours.state_dict()["state"][0]["step"]) == 8


def test_fused_step_skips_parameters_without_gradient_like_torch():
    ours, reference, opt_ours, opt_ref, step = _twins()
    for i in range(4):
        _backward(ours, i)
        _backward(reference, i)
        if i == 2:  # one parameter gets no gradient this step
            ours[2].bias.grad = None
            reference[2].bias.grad = None
        step()
        opt_ref.step()
        assert _same_parameters(ours, reference)
    assert float(opt_ours.state[ours[2].bias]["step"]) == 3


def test_fused_step_runs_optimizer_hooks_and_other_optimizers_through_torch():
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, fused=True)
    calls = []
    opt.register_step_post_hook(lambda *_: calls.append(1))
    step = FusedAdamStep(opt)
    for i in range(3):
        _backward(net, i)
        step()
    assert len(calls) == 3

    sgd_net, sgd_reference = _net(), _net()
    sgd = torch.optim.SGD(sgd_net.parameters(), lr=0.1, momentum=0.9)
    sgd_ref = torch.optim.SGD(sgd_reference.parameters(), lr=0.1, momentum=0.9)
    sgd_step = FusedAdamStep(sgd)
    for i in range(3):
        _backward(sgd_net, i)
        _backward(sgd_reference, i)
        sgd_step()
        sgd_ref.step()
    assert _same_parameters(sgd_net, sgd_reference)


@pytest.mark.parametrize("max_norm", [0.01, 1e6])
def test_clip_grad_norm_matches_torch(max_norm):
    ours, reference = _net(), _net()
    _backward(ours, 0)
    _backward(reference, 0)
    ours[0].bias.grad = None
    reference[0].bias.grad = None
    norm = clip_grad_norm_(list(ours.parameters()), max_norm)
    norm_ref = nn.utils.clip_grad_norm_(list(reference.parameters()), max_norm)
    torch.testing.assert_close(norm, norm_ref)
    for p, q in zip(ours.parameters(), reference.parameters()):
        if q.grad is None:
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in ours.parameters() if p.grad is not None]))
    assert clipped <= min(max_norm, float(norm_ref)) * (1 + 1e-5)
