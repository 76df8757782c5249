"""torch_threads: auto, explicit counts, torch's default, and the oversubscription warning."""

from __future__ import annotations

import pytest
import torch

from rltrain.errors import ConfigError
from rltrain.threads import auto_threads, configure_torch_threads, oversubscription, resolve_threads, usable_cores


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 1), (3, 1), (4, 2), (8, 4), (64, 4)])
def test_auto_is_half_the_cores_at_most_four(cores, expected):
    assert auto_threads(cores) == expected


def test_settings_resolve_or_are_rejected_by_name():
    assert resolve_threads("auto") == auto_threads(usable_cores())
    assert resolve_threads(3) == 3
    assert resolve_threads(None) is None
    for bad in (0, -2, "many", 1.5, True):
        with pytest.raises(ConfigError, match=r"torch_threads=.*accepted values are auto"):
            resolve_threads(bad)


def test_oversubscription_warns_only_when_the_threads_lack_free_cores():
    assert oversubscription(threads=1, cores=2, load=5.0) is None  # one thread is the safe choice already
    assert oversubscription(threads=2, cores=8, load=3.0) is None
    message = oversubscription(threads=2, cores=2, load=1.0)
    assert "load average 1.0 on 2 cores" in message and "torch_threads=1" in message


def test_configure_sets_torch_threads():
    before = torch.get_num_threads()
    try:
        assert configure_torch_threads(1) == torch.get_num_threads() == 1
        assert configure_torch_threads(None) == 1  # null leaves the current setting alone
    finally:
        torch.set_num_threads(before)
