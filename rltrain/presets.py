"""Tuned hyperparameter presets: ``configs/hparams/<algo>_<env>.yaml``.

The primary config's defaults list holds ``optional hparams: ${algo}_${env}``: when the chosen pair
has a preset, Hydra merges it after the algo, env, network and trainer groups and before the
command line, so the preset replaces the generic defaults and every override given by the user
still wins. A pair without a preset keeps the algorithm's paper defaults. ``hparams=none`` turns
the preset off; ``hparams=<name>`` applies another pair's preset. Each preset sets ``preset: <name>``,
which the run's ``config.yaml`` records.
"""

from __future__ import annotations

from importlib import resources

from omegaconf import DictConfig

from rltrain.errors import ConfigError

OFF = "none"


def available() -> list[str]:
    """The names of the shipped presets (``<algo>_<env>``)."""
    folder = resources.files("rltrain.configs") / "hparams"
    return sorted(entry.name.removesuffix(".yaml") for entry in folder.iterdir() if entry.name.endswith(".yaml"))


def automatic_choice(choices: dict) -> str:
    """The preset name the defaults list asks for when ``hparams`` is not given: ``<algo>_<env>``."""
    return f"{choices['algo']}_{choices['env']}"


def check_choice(choices: dict) -> None:
    """An ``hparams=`` given on the command line must name a shipped preset or ``none``; the automatic
    ``<algo>_<env>`` may be absent (the pair then has no preset)."""
    choice = choices.get("hparams")
    if choice in (None, OFF, automatic_choice(choices)) or choice in available():
        return
    raise ConfigError(f"hparams={choice}: no such preset. Accepted: {OFF} (the algorithm's defaults) or one of "
                      f"{', '.join(available())}")


def announce(cfg: DictConfig, choices: dict) -> str:
    """The line a run prints at start: which hyperparameters it trains with."""
    check_choice(choices)
    algo = choices["algo"]
    if cfg.preset is not None:
        return (f"rltrain: hyperparameters: tuned preset {cfg.preset} (configs/hparams/{cfg.preset}.yaml), "
                f"under your overrides; hparams={OFF} gives {algo}'s paper defaults")
    task = f"dataset {cfg.dataset.id}" if cfg.dataset is not None else f"env={choices['env']}"
    if choices.get("hparams") in (None, OFF) and automatic_choice(choices) in available():
        return (f"rltrain: hyperparameters: {algo}'s paper defaults (configs/algo/{algo}.yaml); "
                f"hparams={OFF} turned off the tuned preset {automatic_choice(choices)}")
    return f"rltrain: hyperparameters: {algo}'s paper defaults (configs/algo/{algo}.yaml); no tuned preset for {task}"
