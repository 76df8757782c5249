"""``python -m rltrain --help`` prints rltrain's own help above Hydra's, and a missing optional
dependency stops with one message naming the extra to install. A missing package is simulated in a
subprocess by a ``sys.modules`` entry set to ``None`` (Python then raises ModuleNotFoundError on import)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import SMALL_NETS, run_module

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TINY_RUN = [*SMALL_NETS, "trainer.total_env_steps=200", "trainer.warmup_steps=100", "trainer.learning_starts=100",
            "trainer.eval_every=200", "trainer.eval_episodes=1", "env.eval_num_envs=1", "logger.progress=false"]


def python_with(modules: dict[str, str], argv: list[str], entry: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``entry`` (``rltrain`` or a script path) with ``argv``, after ``sys.modules[name] = <expr>``
    for each of ``modules``."""
    lines = ["import runpy, sys, types"] + [f"sys.modules[{name!r}] = {expr}" for name, expr in modules.items()]
    lines.append(f"sys.argv = {[entry, *argv]!r}")
    if entry == "rltrain":
        lines.append("from rltrain.__main__ import main; main()")
    else:
        lines.append(f"runpy.run_path({entry!r}, run_name='__main__')")
    env = {**os.environ, "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True, text=True, timeout=300,
                          env=env, cwd=cwd)


def test_help_starts_with_rltrains_own_text_then_hydras():
    out = run_module("rltrain", ["--help"], timeout=120).stdout
    assert out.startswith("rltrain: config-driven reinforcement learning")
    ours, _, hydras = out.partition("---------------- Hydra ----------------")
    assert hydras, "Hydra's generic sections follow rltrain's"
    groups = sorted(p.name for p in CONFIGS.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__"))
    undocumented = [g for g in groups if f"\n  {g} " not in ours and f"  {g}  " not in ours]
    assert not undocumented, f"config groups missing from rltrain's help: {undocumented}"
    assert "runs/<algo>/<env id or dataset id>/<timestamp>/" in ours and "hparams=none" in ours
    assert "python -m rltrain resume=<run dir>" in ours and "python scripts/results_table.py" in ours
    presets = sorted(p.stem for p in (CONFIGS / "hparams").glob("*.yaml"))
    assert f"hparams: {', '.join(presets)}" in hydras and "== Config ==" in hydras
    assert "$APP_CONFIG_GROUPS" not in out and "--hydra-help" in out


@pytest.mark.parametrize("missing, argv, extra", [
    ({"wandb": "None"}, ["logger=wandb"], "wandb"),
    ({"tensorboard": "None"}, ["logger=tensorboard"], "tensorboard"),
    ({"hydra_plugins.hydra_joblib_launcher": "None"}, ["-m", "hydra/launcher=joblib", "seed=0,1"], "launchers"),
    ({"hydra_plugins.hydra_submitit_launcher": "None"}, ["-m", "hydra/launcher=submitit_slurm"], "launchers"),
    ({"hydra_plugins.hydra_optuna_sweeper": "None"}, ["-m", "hparams_search=sac_pendulum"], "optuna"),
], ids=["wandb", "tensorboard", "joblib", "submitit", "optuna"])
def test_a_missing_extra_names_what_to_install(tmp_path, missing, argv, extra):
    proc = python_with(missing, [*argv, *TINY_RUN, f"run_root={tmp_path}"], "rltrain", ROOT)
    assert proc.returncode == 2, proc.stderr
    assert f"needs the {extra!r} extra" in proc.stderr and f'pip install "rltrain[{extra}]"' in proc.stderr
    assert "Traceback" not in proc.stderr and "ModuleNotFoundError" not in proc.stderr
    assert not (tmp_path / "sweeps").exists() and not list(tmp_path.rglob("eval.csv"))


def test_a_wandb_older_than_the_code_needs_is_refused(tmp_path):
    old = {"wandb": "types.SimpleNamespace(__version__='0.16.6')"}
    proc = python_with(old, ["logger=wandb", *TINY_RUN, f"run_root={tmp_path}"], "rltrain", ROOT)
    assert proc.returncode == 2
    assert "logger=wandb needs wandb>=0.19.10, found 0.16.6" in proc.stderr and "rltrain[wandb]" in proc.stderr


def test_plotting_without_matplotlib_names_the_plots_extra(tmp_path):
    proc = python_with({"matplotlib": "None"}, [str(tmp_path)], str(ROOT / "scripts" / "plot_curves.py"), ROOT)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "plot_curves needs the 'plots' extra" in proc.stderr and 'pip install "rltrain[plots]"' in proc.stderr


def test_pyproject_declares_the_wandb_the_code_needs():
    from rltrain.loggers import WANDB_MIN_VERSION

    text = (ROOT / "pyproject.toml").read_text()
    assert f'wandb = ["wandb>={WANDB_MIN_VERSION}"]' in text and f'"wandb>={WANDB_MIN_VERSION}"' in text.split("dev =")[1]
