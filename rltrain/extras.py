"""Optional dependencies (pyproject's extras): a missing one stops with one message naming the extra.

``require("wandb", "wandb", "logger=wandb")`` imports and returns the module, or raises
:class:`MissingExtraError` (a :class:`ConfigError`, so the entry points print it without a
traceback). Hydra's launcher and sweeper plugins are checked from the command line before Hydra
starts (:func:`check_plugins`), since Hydra itself would only say that the option does not exist.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from packaging.version import Version

from rltrain.errors import ConfigError

# (Hydra config group, option or None for any) on the command line -> (plugin module, extra)
PLUGINS = {
    ("hydra/launcher", "joblib"): ("hydra_plugins.hydra_joblib_launcher", "launchers"),
    ("hydra/launcher", "submitit_local"): ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    ("hydra/launcher", "submitit_slurm"): ("hydra_plugins.hydra_submitit_launcher", "launchers"),
    ("hydra/sweeper", "optuna"): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),
    ("hparams_search", None): ("hydra_plugins.hydra_optuna_sweeper", "optuna"),   # every search runs on Optuna
}


class MissingExtraError(ConfigError):
    """An optional dependency is missing or too old; the message names the extra that installs it."""


def install_hint(extra: str) -> str:
    return f'pip install "rltrain[{extra}]" (from a checkout: pip install -e ".[{extra}]")'


def require(module: str, extra: str, feature: str, min_version: str | None = None) -> ModuleType:
    """Import ``module`` for ``feature``; a missing module, or one older than ``min_version``, raises
    :class:`MissingExtraError` naming ``extra``."""
    try:
        imported = importlib.import_module(module)
    except ImportError as err:
        raise MissingExtraError(f"{feature} needs the {extra!r} extra ({module} is not installed): "
                                f"{install_hint(extra)}") from err
    version = getattr(imported, "__version__", None)
    if min_version and version and Version(version) < Version(min_version):
        raise MissingExtraError(f"{feature} needs {module}>={min_version}, found {version}: {install_hint(extra)}")
    return imported


def check_plugins(argv: list[str]) -> None:
    """The Hydra plugins that the command line selects (a launcher, the Optuna sweeper) are installed."""
    for arg in argv:
        group, _, option = arg.lstrip("+~").partition("=")
        for (plugin_group, plugin_option), (module, extra) in PLUGINS.items():
            if group == plugin_group and option not in ("", "null") and plugin_option in (None, option):
                require(module, extra, f"{group}={option}")
