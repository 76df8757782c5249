"""W&B (offline, no account) and TensorBoard through the CLI; CSV logger behaviour."""

from __future__ import annotations

import pytest

from rltrain.loggers import CSVLogger
from tests.helpers import only_run_dir, run_cli
from tests.test_cli import SHORT, read_rows


@pytest.mark.slow
def test_wandb_offline_without_api_key_and_resume_keeps_the_run(tmp_path):
    no_account = {"WANDB_MODE": None, "WANDB_API_KEY": None, "HOME": str(tmp_path),
                  "NETRC": str(tmp_path / "no-netrc"), "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config")}
    run_cli([*SHORT, "logger=wandb", "seed=5"], tmp_path / "runs", env=no_account)
    run_dir = only_run_dir(tmp_path / "runs")
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, "expected one offline W&B run when no API key is configured"
    run_id = offline_runs[0].name.rsplit("-", 1)[1]
    run_cli([f"resume={run_dir}", "trainer.total_env_steps=1800"], tmp_path / "runs", env=no_account)
    assert {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")} == {run_id}


@pytest.mark.slow
def test_tensorboard_writes_event_files(tmp_path):
    run_cli([*SHORT, "logger=tensorboard"], tmp_path)
    events = list((only_run_dir(tmp_path) / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0


def test_csv_logger_grows_columns_and_truncates_on_resume(tmp_path):
    logger = CSVLogger(tmp_path)
    logger.log("train", {"env_step": 1, "loss": 0.5})
    logger.log("train", {"env_step": 2, "loss": 0.4, "alpha": 0.9})
    logger.log("train", {"env_step": 3, "loss": 0.3, "alpha": 0.8})
    rows = read_rows(tmp_path / "metrics.csv")
    assert rows[0] == {"env_step": "1", "loss": "0.5", "alpha": ""} and rows[2]["alpha"] == "0.8"
    CSVLogger(tmp_path).truncate_after(2)
    assert [r["env_step"] for r in read_rows(tmp_path / "metrics.csv")] == ["1", "2"]
