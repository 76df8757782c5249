"""Where metrics go: CSV files (always), the console, and optionally W&B or TensorBoard.

Every logger receives two streams: ``train`` (loss terms and throughput, every ``log_every`` steps)
and ``eval`` (evaluation returns). Both carry ``env_step`` and ``update`` so curves can be drawn
against either. The x-axis (``step_key``) is ``env_step`` for online runs (the SB3 / CleanRL
convention) and ``update``, the gradient step, for offline runs (the d3rlpy / jaxrl convention).
"""

from __future__ import annotations

import csv
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from rltrain.extras import require

Metrics = dict[str, float | int]
WANDB_MIN_VERSION = "0.19.10"   # wandb.init(reinit="create_new"): one run per job of a sweep


class CSVLogger:
    """``metrics.csv`` (train), ``eval.csv`` and ``videos.csv`` (``trainer.video_every``) in the run directory.

    The header grows if a later row brings a new column (the file is rewritten once then).
    :meth:`truncate_after` drops rows past a checkpoint's step when a run resumes.
    """

    def __init__(self, run_dir: Path):
        self.paths = {"train": Path(run_dir) / "metrics.csv", "eval": Path(run_dir) / "eval.csv",
                      "videos": Path(run_dir) / "videos.csv"}
        self._columns: dict[str, list[str]] = {}
        for stream, path in self.paths.items():
            if path.exists():
                with path.open(newline="") as f:
                    self._columns[stream] = next(csv.reader(f), [])

    def log(self, stream: str, metrics: Metrics) -> None:
        path = self.paths[stream]
        columns = self._columns.get(stream)
        if columns is None or not set(metrics) <= set(columns):
            rows = self._read(stream)
            columns = list(dict.fromkeys([*(columns or []), *metrics]))
            self._columns[stream] = columns
            self._write(path, columns, rows)
        with path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=columns).writerow(metrics)

    def _read(self, stream: str) -> list[dict[str, str]]:
        path = self.paths[stream]
        if not path.exists():
            return []
        with path.open(newline="") as f:
            return list(csv.DictReader(f))

    @staticmethod
    def _write(path: Path, columns: list[str], rows: list[dict]) -> None:
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)

    def truncate_after(self, step: int, step_key: str = "env_step") -> None:
        """Drop rows logged after ``step`` (they belong to the interrupted part of a run)."""
        for stream, path in self.paths.items():
            if path.exists():
                rows = [r for r in self._read(stream) if int(float(r[step_key])) <= step]
                self._write(path, self._columns[stream], rows)


class WandbLogger:
    """Weights & Biases. Offline mode unless an API key is configured (or ``mode`` says otherwise).

    Metrics are logged as ``train/*`` and ``eval/*`` against ``train/<step_key>`` (W&B's own step
    must be monotonic, so it is not used as the x-axis).
    """

    def __init__(self, run_dir: Path, config: dict, *, project: str, entity: str | None, group: str | None,
                 name: str | None, tags: list[str] | None, mode: str | None, run_id: str | None = None,
                 step_key: str = "env_step"):
        wandb = require("wandb", "wandb", "logger=wandb", min_version=WANDB_MIN_VERSION)
        self._wandb = wandb
        mode = mode or ("online" if _wandb_has_api_key() else "offline")
        if mode == "online":
            unreachable = wandb_unreachable()
            if unreachable:
                print(f"rltrain: warning: W&B is unreachable ({unreachable}); logging offline to {run_dir}/wandb "
                      "(upload later with `wandb sync`)", file=sys.stderr, flush=True)
                mode = "offline"
        self.run = wandb.init(
            project=project, entity=entity, group=group, name=name, tags=tags, config=config, mode=mode,
            dir=str(run_dir), id=run_id, resume="allow" if run_id else None, reinit="create_new",
            settings=wandb.Settings(console="off"),
        )
        self.step_key = step_key
        axis = f"train/{step_key}"
        self.run.define_metric(axis)
        self.run.define_metric("train/*", step_metric=axis)
        self.run.define_metric("eval/*", step_metric=axis)

    @property
    def run_id(self) -> str:
        return self.run.id

    def log(self, stream: str, metrics: Metrics) -> None:
        payload = {f"{stream}/{k}": v for k, v in metrics.items()}
        payload[f"train/{self.step_key}"] = metrics[self.step_key]
        self.run.log(payload)

    def log_video(self, path: str, metrics: Metrics) -> None:
        import wandb

        self.run.log({"eval/video": wandb.Video(path, format="mp4"), f"train/{self.step_key}": metrics[self.step_key]})

    def summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(summary)

    def close(self, exit_code: int = 0) -> None:
        self.run.finish(exit_code=exit_code)


WANDB_PROBE_TIMEOUT_S = 3.0


def wandb_unreachable(timeout: float = WANDB_PROBE_TIMEOUT_S) -> str | None:
    """Why the W&B server (``WANDB_BASE_URL``, default https://api.wandb.ai) does not answer, or None.

    Online ``wandb.init`` on a machine without network retries for about 100 s and then fails; this
    probe makes one HTTP request instead (any HTTP answer counts as reachable) and gives up after
    ``timeout`` seconds, name resolution included (it runs in a thread that is not waited for)."""
    base = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").rstrip("/")
    host = urllib.parse.urlsplit(base).netloc or base
    outcome: list[str | None] = []

    def request() -> None:
        try:
            urllib.request.urlopen(f"{base}/healthz", timeout=timeout).close()
            outcome.append(None)
        except urllib.error.HTTPError:  # the server answered
            outcome.append(None)
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", err)
            outcome.append(f"{host}: {getattr(reason, 'strerror', None) or reason}")

    probe = threading.Thread(target=request, daemon=True)
    probe.start()
    probe.join(timeout)
    return outcome[0] if outcome else f"{host}: no answer within {timeout:g} s"


def _wandb_has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.exists() and "api.wandb.ai" in netrc.read_text(errors="ignore")


class TensorboardLogger:
    """TensorBoard event files under ``<run_dir>/tensorboard``, x-axis = ``step_key``."""

    def __init__(self, run_dir: Path, step_key: str = "env_step"):
        require("tensorboard", "tensorboard", "logger=tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
        self.step_key = step_key

    def log(self, stream: str, metrics: Metrics) -> None:
        step = int(metrics[self.step_key])
        for key, value in metrics.items():
            if key != self.step_key and isinstance(value, int | float):  # not labels such as the phase
                self.writer.add_scalar(f"{stream}/{key}", value, step)

    def log_video(self, path: str, metrics: Metrics) -> None:
        """Videos stay MP4 files in the run directory (TensorBoard's add_video needs moviepy and the
        frames in memory); their return is logged as a scalar."""
        self.writer.add_scalar("eval/video_return", metrics["video_return"], int(metrics[self.step_key]))

    def close(self, exit_code: int = 0) -> None:
        self.writer.close()


class ConsoleProgress:
    """A live progress bar (env steps or updates, updates/s, latest eval return) on a terminal; on a
    pipe or file, one plain line per evaluation instead."""

    def __init__(self, total_steps: int, initial: int = 0, enabled: bool = True):
        self.interactive = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.bar = tqdm(total=total_steps, initial=initial, unit="step", dynamic_ncols=True,
                        disable=not self.interactive, smoothing=0.05)
        self._postfix: dict[str, str] = {}

    def advance(self, step: int) -> None:
        if self.interactive:
            self.bar.update(step - self.bar.n)

    def train(self, metrics: Metrics) -> None:
        self._postfix["upd/s"] = f"{metrics.get('updates_per_s', 0.0):.0f}"
        if self.interactive:
            self.bar.set_postfix(self._postfix, refresh=False)

    def eval(self, metrics: Metrics) -> None:
        self._postfix["eval"] = f"{metrics['return_mean']:.1f}"
        score = metrics.get("normalized_score")
        if score is not None:
            self._postfix["score"] = f"{score:.1f}"
        if self.interactive:
            self.bar.set_postfix(self._postfix)
        elif self.enabled:
            scored = "" if score is None else f" normalized_score={score:.1f}"
            print(f"[rltrain] env_step={metrics['env_step']} update={metrics['update']} "
                  f"eval_return={metrics['return_mean']:.2f} ± {metrics['return_std']:.2f}{scored} "
                  f"upd/s={self._postfix.get('upd/s', '-')}", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


class Loggers:
    """Fan-out to the CSV logger, the console and the optional backends."""

    def __init__(self, csv_logger: CSVLogger, console: ConsoleProgress, backends: list):
        self.csv = csv_logger
        self.console = console
        self.backends = backends

    def log_train(self, metrics: Metrics) -> None:
        self.csv.log("train", metrics)
        self.console.train(metrics)
        for backend in self.backends:
            backend.log("train", metrics)

    def log_eval(self, metrics: Metrics) -> None:
        self.csv.log("eval", metrics)
        self.console.eval(metrics)
        for backend in self.backends:
            backend.log("eval", metrics)

    def log_video(self, path: str, metrics: Metrics) -> None:
        """A training-time video (an MP4 in the run directory): its path and return go to
        ``videos.csv``; W&B also uploads it."""
        self.csv.log("videos", {**metrics, "path": path})
        for backend in self.backends:
            backend.log_video(path, metrics)

    def state_dict(self) -> dict:
        return {"wandb_run_id": next((b.run_id for b in self.backends if isinstance(b, WandbLogger)), None)}

    def summary(self, summary: dict[str, Any]) -> None:
        for backend in self.backends:
            if hasattr(backend, "summary"):
                backend.summary(summary)

    def close(self, exit_code: int = 0) -> None:
        self.console.close()
        for backend in self.backends:
            backend.close(exit_code)
