"""One table of the config's value ranges, checked before anything is built.

:data:`RULES` maps dotted key patterns (``*`` matches one key) to what the key accepts. Every leaf of
the composed config that a rule matches is checked; the first bad value stops the run with a
:class:`~rltrain.errors.ConfigError` naming the key, the value and what is accepted. A few checks
relate two keys (``trainer.buffer_size >= trainer.batch_size``, not every learning rate zero);
they follow the table in :func:`validate_config`.

Keys added on the command line with ``+key=value`` (Hydra's way past the misspelled-key check) are
rejected unless they lie under a documented extension point (:data:`EXTENSION_POINTS`), whose keys
the code that reads them checks in turn (e.g. ``algo.loss.*`` against the objective's arguments).
"""

from __future__ import annotations

import difflib
import importlib.resources
import inspect
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
from gymnasium.envs.registration import load_env_creator
from omegaconf import DictConfig, OmegaConf

from rltrain import presets
from rltrain.compiled import COMPILE_MODES, check_compile_mode
from rltrain.errors import ConfigError

CONFIG_DIR = Path(str(importlib.resources.files("rltrain.configs")))


# ---- value checks --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """``test(value)`` is True for accepted values; ``accepted`` says what they are, for the message."""

    test: Callable[[Any], bool]
    accepted: str

    def or_null(self) -> Check:
        return Check(lambda v: v is None or self.test(v), f"{self.accepted}, or null")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)) and math.isfinite(value)


def integer(low: int, high: int | None = None) -> Check:
    """A whole number in ``[low, high]`` (a float that is a whole number counts, e.g. 1e6)."""
    def test(v):
        whole = _is_int(v) or (_is_number(v) and float(v).is_integer())
        return whole and v >= low and (high is None or v <= high)
    bound = f">= {low}" if high is None else f"in [{low}, {high}]"
    return Check(test, f"an integer {bound}")


def number(low: float | None = None, high: float | None = None, *, low_open: bool = False,
           high_open: bool = False) -> Check:
    """A finite number in the interval; ``low_open``/``high_open`` exclude the bound."""
    def test(v):
        if not _is_number(v):
            return False
        above = low is None or (v > low if low_open else v >= low)
        below = high is None or (v < high if high_open else v <= high)
        return above and below
    if low is not None and high is not None:
        accepted = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        accepted = f"a number {'>' if low_open else '>='} {low:g}"
    elif high is not None:
        accepted = f"a number {'<' if high_open else '<='} {high:g}"
    else:
        accepted = "a finite number"
    return Check(test, accepted)


def layer_sizes() -> Check:
    return Check(lambda v: isinstance(v, list) and all(_is_int(n) and n >= 1 for n in v),
                 "a list of layer sizes, each an integer >= 1 (e.g. [256,256])")


def adam_betas() -> Check:
    return Check(lambda v: isinstance(v, list) and len(v) == 2 and all(_is_number(b) and 0 <= b < 1 for b in v),
                 "two numbers in [0, 1) (e.g. [0.9,0.999])")


def boolean() -> Check:
    return Check(lambda v: isinstance(v, bool), "true or false")


DEVICE = Check(lambda v: isinstance(v, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", v) is not None,
               "auto, cpu, cuda or cuda:N")
COUNT = integer(1)
STEPS = integer(0)
POSITIVE = number(0, low_open=True)
NON_NEGATIVE = number(0)
FRACTION = number(0, 1)

# key pattern -> accepted values. Keys not present in a config are skipped.
RULES: dict[str, Check] = {
    # top level
    "seed": integer(0),
    "device": DEVICE,
    "torch_threads": Check(lambda v: v is None or v == "auto" or (_is_int(v) and v >= 1),
                           "auto, an integer >= 1, or null"),
    # trainer (steps count env steps online, gradient updates offline)
    "trainer.total_env_steps": COUNT,
    "trainer.total_updates": COUNT,
    "trainer.warmup_steps": STEPS,
    "trainer.learning_starts": STEPS,
    "trainer.updates_per_step": POSITIVE,
    "trainer.train_every": COUNT,
    "trainer.batch_size": COUNT,
    "trainer.buffer_size": COUNT,
    "trainer.eval_every": COUNT,
    "trainer.eval_episodes": COUNT,
    "trainer.checkpoint_every": COUNT,
    "trainer.log_every": COUNT,
    "trainer.policy_snapshots": boolean(),
    "trainer.video_every": STEPS,
    "trainer.compile": Check(lambda v: v in COMPILE_MODES, f"one of {', '.join(COMPILE_MODES)}"),
    "trainer.updates_per_call": COUNT,
    # environments
    "env.num_envs": COUNT,
    "env.eval_num_envs": COUNT,
    "env.max_episode_steps": COUNT.or_null(),
    "env.atari.frame_skip": COUNT,
    "env.atari.frame_stack": COUNT,
    "env.atari.noop_max": STEPS,
    "env.atari.screen_size": COUNT,
    "env.kwargs": Check(lambda v: isinstance(v, dict), "a mapping of gymnasium.make arguments"),
    # the run's mode
    "source.offline_updates": STEPS,
    "source.online_env_steps": COUNT,
    "source.mix": FRACTION.or_null(),
    # networks
    "network.*.num_cells": layer_sizes(),
    "network.*.layer_norm": boolean(),
    "network.*.scale_lb": POSITIVE,
    "network.critic.batch_renorm.momentum": number(0, 1, low_open=True),
    "network.critic.batch_renorm.warmup_steps": STEPS,
    # the objective
    "algo.gamma": FRACTION,
    "algo.updater.tau": number(0, 1, low_open=True),
    "algo.updater.value_network_update_interval": COUNT,
    "algo.updater_every": COUNT,
    "algo.loss.num_qvalue_nets": COUNT,
    "algo.loss.sub_sample_len": COUNT,
    "algo.loss.alpha_init": POSITIVE,
    "algo.loss.min_alpha": NON_NEGATIVE.or_null(),
    "algo.loss.max_alpha": POSITIVE.or_null(),
    "algo.loss.expectile": number(0, 1, low_open=True, high_open=True),
    "algo.loss.temperature": POSITIVE,
    "algo.loss.policy_noise": NON_NEGATIVE,
    "algo.loss.noise_clip": NON_NEGATIVE,
    "algo.loss.clip_epsilon": POSITIVE,
    "algo.loss.critic_coeff": NON_NEGATIVE,
    "algo.loss.entropy_coeff": NON_NEGATIVE,
    "algo.loss.kl_weight": NON_NEGATIVE,
    "algo.loss.min_q_weight": NON_NEGATIVE,
    "algo.loss.num_random": COUNT,
    "algo.loss.samples_mc_entropy": COUNT,
    "algo.loss.alpha": NON_NEGATIVE,
    "algo.loss.lagrange_thresh": NON_NEGATIVE,
    "algo.optim.*.lr": NON_NEGATIVE,
    "algo.optim.*.betas": adam_betas(),
    "algo.optim.*.eps": POSITIVE,
    "algo.optim.*.weight_decay": NON_NEGATIVE,
    "algo.optim.*.grad_clip": POSITIVE.or_null(),
    "algo.optim.*.every": COUNT,
    "algo.optim.*.warmup_steps": STEPS,
    "algo.exploration.sigma": NON_NEGATIVE,
    "algo.exploration.eps_init": FRACTION,
    "algo.exploration.eps_end": FRACTION,
    "algo.exploration.annealing_steps": COUNT,
    "algo.support.n_atoms": integer(2),
    "algo.support.vmin": number(),
    "algo.support.vmax": number(),
    "algo.n_step": COUNT,
    "algo.eval_target_scale": POSITIVE,
    "algo.online_target_scale": number(),
    "dataset.reward_scale": number(),
    "dataset.reward_shift": number(),
    "algo.gae_lambda": FRACTION,
    "algo.epochs": COUNT,
    "algo.steps_per_env": COUNT,
    "algo.context_len": COUNT,
    "algo.max_ep_len": COUNT,
    "algo.rtg_scale": POSITIVE,
    "algo.chunk_size": COUNT,
    "algo.ensemble_decay": NON_NEGATIVE,
    "algo.pretrain_updates": STEPS,
    "algo.updates_per_episode": COUNT,
    "algo.episodes_per_collect": COUNT,
    "algo.buffer_episodes": COUNT,
    "algo.bc_warmup_updates": STEPS,
    "algo.model.num_cells": layer_sizes(),
    "algo.model.dropout": number(0, 1, high_open=True),
    "algo.model.beta_start": number(0, 1, low_open=True, high_open=True),
    "algo.model.beta_end": number(0, 1, low_open=True, high_open=True),
    **{f"algo.model.{size}": COUNT for size in ("embed_dim", "n_layer", "n_head", "n_heads", "inner_dim", "ff_dim",
                                                "latent_dim", "n_encoder_layers", "n_decoder_layers", "num_steps",
                                                "time_embed_dim")},
    "algo.reward_model.num_cells": layer_sizes(),
    "algo.reward_model.lr": POSITIVE,
    "algo.reward_model.batch_size": COUNT,
    "algo.reward_model.train_every": COUNT,
    "algo.reward_model.updates_per_round": COUNT,
    "algo.reward_model.loss.gp_lambda": NON_NEGATIVE,
}

# Keys that ``+key=value`` may add: the code reading them checks their names.
EXTENSION_POINTS = (
    "algo.loss.*",          # objective constructor arguments (checked against its signature)
    "algo.model.*",         # transformer / DDPM / CVAE constructor arguments
    "env.kwargs.*",         # gymnasium.make arguments
    "algo.exploration",     # exploration noise for an objective without it (and its settings)
    "algo.exploration.*",
    "algo.term_windows.*",  # loss term -> [first update, end update)
    *(f"algo.optim.*.{leaf}" for leaf in ("optimizer", "lr", "betas", "eps", "weight_decay", "grad_clip", "every",
                                          "schedule", "warmup_steps")),
)


# ---- the checks ------------------------------------------------------------------------------------

def _matches(pattern: str, key: str) -> bool:
    parts, keys = pattern.split("."), key.split(".")
    return len(parts) == len(keys) and all(p in ("*", k) for p, k in zip(parts, keys))


def _leaves(node, prefix: str = ""):
    """(dotted key, value) of every entry, inner mappings included (``env.kwargs`` is checked whole)."""
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield path, value
            yield from _leaves(value, path)


def check_value(key: str, value) -> None:
    """Raise :class:`ConfigError` if a rule of :data:`RULES` matches ``key`` and refuses ``value``."""
    for pattern, check in RULES.items():
        if _matches(pattern, key):
            if not check.test(value):
                raise ConfigError(f"{key}={_show(value)} is not accepted: {key} must be {check.accepted}")
            return


def _show(value) -> str:
    return "null" if value is None else repr(value) if isinstance(value, str) else str(value)


def check_added_keys(overrides: list[str]) -> None:
    """``+key=value`` / ``++key=value`` overrides may only add keys under :data:`EXTENSION_POINTS`."""
    for override in overrides:
        if not override.startswith("+"):
            continue
        key = override.lstrip("+").partition("=")[0]
        if "@" in key or (CONFIG_DIR / key).is_dir():  # a config group (+experiment=...), not a value
            continue
        if not any(_matches(point, key) for point in EXTENSION_POINTS):
            raise ConfigError(f"unknown key {key!r} added with {override!r}: '+' may only add keys under "
                              f"{', '.join(p for p in EXTENSION_POINTS if p.count('.') < 3)} or "
                              "algo.optim.<group>.<setting>; check the spelling of the key (without '+' a misspelled "
                              "key is rejected by name)")


def _check_learning_rates(values: dict) -> None:
    lrs = {key: value for key, value in values.items() if _matches("algo.optim.*.lr", key)}
    if lrs and all(value == 0 for value in lrs.values()):
        raise ConfigError(f"every learning rate is 0 ({', '.join(f'{k}=0' for k in lrs)}): nothing would learn; "
                          "set at least one algo.optim.<group>.lr > 0")


def _check_buffer(values: dict) -> None:
    size, batch = values.get("trainer.buffer_size"), values.get("trainer.batch_size")
    if _is_number(size) and _is_number(batch) and size < batch:
        raise ConfigError(f"trainer.buffer_size={size} is smaller than trainer.batch_size={batch}: no batch could "
                          "ever be sampled; trainer.buffer_size must be >= trainer.batch_size")


def _check_compile_device(values: dict) -> None:
    """``trainer.compile=cudagraphs`` needs the run's device to be CUDA (``auto`` picks it when there is one)."""
    if values.get("trainer.compile") != "cudagraphs" or not isinstance(values.get("device"), str):
        return
    from rltrain.build.assembly import resolve_device

    check_compile_mode("cudagraphs", resolve_device(values["device"]))


def _check_env_kwargs(values: dict) -> None:
    """``env.kwargs`` against the constructor of the registered env (gymnasium passes them on to it)."""
    kwargs, env_id = values.get("env.kwargs"), values.get("env.id")
    if not kwargs or not isinstance(env_id, str) or env_id not in gym.registry:
        return
    entry_point = gym.registry[env_id].entry_point
    try:
        creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
        parameters = inspect.signature(creator).parameters
    except Exception:  # noqa: BLE001 - an entry point that cannot be inspected is left to gymnasium.make
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = sorted(set(kwargs) - set(parameters))
    if unknown:
        raise ConfigError(f"env.kwargs has unknown key(s) {unknown} for {env_id}; its constructor accepts: "
                          f"{', '.join(parameters) or 'no arguments'}")


def validate_config(cfg: DictConfig, overrides: list[str] = ()) -> None:
    """Check every value of ``cfg`` against :data:`RULES`, the relations between keys, and the keys
    ``overrides`` add with ``+``; raise :class:`ConfigError` on the first problem."""
    check_added_keys(list(overrides))
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    values = dict(_leaves(container))
    for key, value in values.items():
        check_value(key, value)
    _check_learning_rates(values)
    _check_buffer(values)
    _check_compile_device(values)
    _check_env_kwargs(values)


# ---- resume --------------------------------------------------------------------------------------

# What ``resume=<run dir> key=value`` may change: the schedule's length and cadence, logging, where
# it runs, and the optimizer settings that are re-applied to the restored optimizers. Everything
# else is fixed by the checkpoint (networks, objective, data, seeds) and refused.
RESUME_OVERRIDABLE = (
    "trainer.total_env_steps", "trainer.total_updates", "trainer.eval_every", "trainer.eval_episodes",
    "trainer.checkpoint_every", "trainer.log_every", "trainer.policy_snapshots", "env.eval_num_envs",
    "trainer.compile", "trainer.updates_per_call", "logger.progress", "logger.backends", "logger.wandb.*", "device",
    "torch_threads", "run_root", "sweep_name",
    *(f"algo.optim.*.{leaf}" for leaf in ("lr", "betas", "eps", "weight_decay", "grad_clip")),
)


def check_resume_override(key: str) -> None:
    """Refuse a ``key=value`` given with ``resume=`` that the checkpoint fixes."""
    if not any(_matches(pattern, key) for pattern in RESUME_OVERRIDABLE):
        raise ConfigError(f"resume: {key} cannot change on a resumed run (the checkpoint was made with the saved "
                          f"value). A resume may change: {', '.join(RESUME_OVERRIDABLE)}. Start a new run to change "
                          f"{key}")


# ---- config groups ---------------------------------------------------------------------------------

def group_options(group: str) -> list[str]:
    """Every option of a config group, nested ones included (``d4rl/hopper``)."""
    root = CONFIG_DIR / group
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))


def check_group_choice(override: str) -> None:
    """``group=option`` on the command line: an option that does not exist is named with every
    available one (Hydra lists only the top folder's)."""
    key, sep, value = override.partition("=")
    group = key.lstrip("+~")
    if not sep or "@" in group or not group or not (CONFIG_DIR / group).is_dir():
        return
    options = group_options(group)
    for choice in value.split(","):  # a multirun lists several
        choice = choice.strip().strip("'\"")
        if choice in ("", "null") or not re.fullmatch(r"[\w./-]+", choice) or choice in options:
            continue
        if group == "hparams" and choice == presets.OFF:  # an optional group: "none" selects no preset
            continue
        close = difflib.get_close_matches(choice, options, n=3, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"{group}={choice}: Could not find '{group}/{choice}'.{hint} Available options in "
                          f"'{group}': {', '.join(options)}")
