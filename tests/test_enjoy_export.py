"""``python -m rltrain.enjoy`` and ``python -m rltrain.export`` as a user runs them, and the video
recording the Trainer calls."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import rltrain
from rltrain import enjoy, export, video
from rltrain.errors import ConfigError
from rltrain.export import export_policy
from rltrain.video import record_episode
from tests.helpers import run_module

TINY = ["torch_threads=1", "logger.progress=false", "network.actor.num_cells=[32,32]",
        "network.critic.num_cells=[32,32]", "trainer.eval_episodes=2", "trainer.total_env_steps=300",
        "trainer.warmup_steps=100", "trainer.learning_starts=100", "trainer.eval_every=300"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, str]:
    """A continuous-action (SAC, Pendulum), a discrete-action (DQN, CartPole) and a pixel (DQN, MinAtar) run."""
    return {name: rltrain.train([*TINY, *extra], run_dir=tmp_path_factory.mktemp(name))["run_dir"]
            for name, extra in (("sac", []), ("dqn", ["algo=dqn", "env=cartpole"]),
                                ("minatar", ["algo=dqn", "env=minatar", "hparams=none"]))}


def mp4_frames(path) -> int:
    import imageio_ffmpeg

    return imageio_ffmpeg.count_frames_and_secs(str(path))[0]


def test_record_episode_writes_one_frame_per_step_plus_the_first(tmp_path, runs):
    agent = rltrain.load_agent(runs["dqn"])
    result = record_episode("CartPole-v1", agent.policy(), tmp_path / "video" / "episode.mp4", seed=3)
    path = tmp_path / "video" / "episode.mp4"
    assert path.stat().st_size > 1000
    assert result["frames"] == result["length"] + 1 == mp4_frames(path)
    episode = rltrain.evaluate(agent, "CartPole-v1", episodes=1, seed=3)
    assert result["return"] == episode["return_mean"]  # rendering does not change the episode


def test_enjoy_prints_returns_and_writes_json_and_videos(runs):
    run_dir = runs["sac"]
    proc = run_module("rltrain.enjoy", [f"run={run_dir}", "episodes=2", "video=true", "seed=5"], timeout=300)
    out = next(iter((Path(run_dir) / "enjoy").iterdir()))
    result = json.loads((out / "returns.json").read_text())
    assert f"return {result['return_mean']:.2f} ± {result['return_std']:.2f}" in proc.stdout
    assert [e["seed"] for e in result["episodes"]] == [5, 6]
    agent = rltrain.load_agent(run_dir)
    for i, episode in enumerate(result["episodes"]):
        assert episode["return"] == rltrain.evaluate(agent, episodes=1, seed=5 + i)["return_mean"]
        assert mp4_frames(out / episode["video"]) == episode["length"] + 1 == 201  # Pendulum's time limit


def test_enjoy_reports_bad_arguments(runs, tmp_path, capsys):
    proc = run_module("rltrain.enjoy", [f"run={runs['sac']}", "episode=3"], check=False)
    assert proc.returncode == 2 and "unknown argument 'episode=3'" in proc.stderr and "episodes=" in proc.stderr
    assert "Traceback" not in proc.stderr
    for args, message in (([f"run={tmp_path}"], "no config.yaml"), ([], "missing run="),
                          ([f"run={runs['sac']}", "checkpoint=newest"], "accepted values are last, best"),
                          ([f"run={runs['sac']}", "episodes=many"], "episodes='many': expected an integer")):
        with pytest.raises(SystemExit) as exit_info:
            enjoy.main(args)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


def _exported_actions(path, fmt: str, obs: np.ndarray) -> np.ndarray:
    if fmt == "torchscript":
        return torch.jit.load(str(path))(torch.from_numpy(obs)).numpy()
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["action"], {"observation": obs})[0]


@pytest.mark.parametrize("name, fmt, command_line", [
    ("sac", "onnx", True), ("dqn", "torchscript", True), ("sac", "torchscript", False), ("dqn", "onnx", False),
])
def test_export_equals_agent_act(runs, tmp_path, name, fmt, command_line):
    out = tmp_path / f"policy.{fmt}"
    agent = rltrain.load_agent(runs[name])
    if command_line:
        run_module("rltrain.export", [f"run={runs[name]}", f"format={fmt}", f"out={out}"])
    else:
        export_policy(agent, out, fmt)
    # observations beyond the sample the trace saw, and a batch size it did not see
    obs = (np.random.default_rng(0).standard_normal((7, agent.obs_dim)) * 3).astype(np.float32)
    exported, expected = _exported_actions(out, fmt, obs), agent.act(obs)
    assert exported.dtype == expected.dtype and exported.shape == expected.shape
    np.testing.assert_allclose(exported, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_export_of_a_pixel_policy_takes_uint8_frames(runs, tmp_path, fmt):
    agent = rltrain.load_agent(runs["minatar"])
    out = export_policy(agent, tmp_path / f"policy.{fmt}", fmt)
    obs = np.stack([agent.observation_space.sample() for _ in range(5)])
    assert obs.dtype == np.uint8 and obs.shape[1:] == (4, 10, 10)
    np.testing.assert_array_equal(_exported_actions(out, fmt, obs), agent.act(obs))


def test_export_rejects_an_unknown_format(runs, capsys):
    with pytest.raises(SystemExit) as exit_info:
        export.main([f"run={runs['sac']}", "format=tflite"])
    assert exit_info.value.code == 2
    assert "format='tflite': accepted values are torchscript, onnx" in capsys.readouterr().err


def test_mujoco_renders_headless_or_names_the_debian_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("MUJOCO_GL", "unset")  # recorded, so the backend chosen below is undone after the test
    monkeypatch.delenv("MUJOCO_GL")
    with monkeypatch.context() as patch:
        patch.setattr(video, "_backend_works", lambda backend: False)  # a machine without EGL or OSMesa
        with pytest.raises(ConfigError, match=r"apt-get install libegl1 .*apt-get install libosmesa6"):
            video.setup_headless_rendering("Hopper-v5")
        video.setup_headless_rendering("CartPole-v1")  # classic control needs no GL
    if not any(video._backend_works(backend) for backend in video.GL_BACKENDS):
        pytest.skip("this machine has no headless GL backend")
    result = record_episode("Hopper-v5", lambda obs: torch.zeros(obs.shape[0], 3), tmp_path / "hopper.mp4", seed=0,
                            max_episode_steps=10)
    assert os.environ["MUJOCO_GL"] in video.GL_BACKENDS
    assert result["frames"] == result["length"] + 1 == mp4_frames(tmp_path / "hopper.mp4")
