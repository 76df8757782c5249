"""Watching a policy: one episode rendered to RGB frames and written as an MP4.

``record_episode(env, policy, path, seed)`` runs one episode of ``policy`` (the episodic protocol of
:mod:`rltrain.evaluate`: torch batches in, ``reset(1)`` at the start, ``record(reward)`` after each
step) in ``env`` rendered with ``render_mode="rgb_array"``, and writes its frames (the first
observation's, then one per step: ``length + 1``) to ``path``. MP4 writing needs ``imageio-ffmpeg``
(``pip install rltrain[video]``).

Classic-control envs render with pygame and need no OpenGL. MuJoCo envs render headless through
EGL (GPU or Mesa) or, failing that, OSMesa (software): :func:`setup_headless_rendering` picks the
first that works unless ``MUJOCO_GL`` is already set, and names the Debian packages when neither is
installed.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import EnvSpec

from rltrain.envs import make_env
from rltrain.errors import ConfigError

GL_BACKENDS = {"egl": "libegl1 libgl1-mesa-dri (EGL; or the GPU driver's EGL)", "osmesa": "libosmesa6 (software)"}
_PROBE = "import mujoco; ctx = mujoco.GLContext(16, 16); ctx.make_current(); ctx.free()"


def is_mujoco(env: str | EnvSpec) -> bool:
    spec = gym.spec(env) if isinstance(env, str) else env
    entry = spec.entry_point if isinstance(spec.entry_point, str) else spec.entry_point.__module__
    return "mujoco" in entry


def _backend_works(backend: str) -> bool:
    """Whether MuJoCo can open a GL context with ``MUJOCO_GL=backend`` (probed in a subprocess: the
    backend is fixed once mujoco is imported)."""
    env = {**os.environ, "MUJOCO_GL": backend, "PYOPENGL_PLATFORM": backend}
    try:
        return subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def setup_headless_rendering(env: str | EnvSpec) -> None:
    """For a MuJoCo env: ``MUJOCO_GL=egl``, else ``osmesa``; a :class:`ConfigError` naming the packages
    when neither opens a context. Call it before the env is made (mujoco reads the variable on import)."""
    if not is_mujoco(env) or os.environ.get("MUJOCO_GL"):
        return
    for backend in GL_BACKENDS:
        if _backend_works(backend):
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)
            return
    packages = "; or ".join(f"{name}: apt-get install {pkgs}" for name, pkgs in GL_BACKENDS.items())
    raise ConfigError(f"no OpenGL backend for headless MuJoCo rendering (tried MUJOCO_GL=egl and osmesa). Install "
                      f"one: {packages}. Or run without video=true.")


def make_render_env(env: str | EnvSpec, max_episode_steps: int | None = None, **kwargs) -> gym.Env:
    setup_headless_rendering(env)
    return make_env(env, max_episode_steps, render_mode="rgb_array", **kwargs)


@torch.no_grad()
def run_episode(env: gym.Env, policy, seed: int, device: torch.device | str = "cpu",
                frames: list[np.ndarray] | None = None) -> dict:
    """One episode of ``policy`` in ``env`` from ``env.reset(seed=seed)``; appends rendered frames to
    ``frames`` when given. Returns the episode's ``return`` and ``length``."""
    obs, _ = env.reset(seed=seed)
    if hasattr(policy, "reset"):
        policy.reset(1)
    if frames is not None:
        frames.append(env.render())
    episode_return, length, done = 0.0, 0, False
    while not done:
        action = policy(torch.as_tensor(obs, dtype=torch.float32, device=device).unsqueeze(0))[0].cpu().numpy()
        obs, reward, terminated, truncated, _ = env.step(action)
        if hasattr(policy, "record"):
            policy.record(torch.as_tensor([reward], dtype=torch.float32, device=device))
        episode_return += float(reward)
        length += 1
        done = terminated or truncated
        if frames is not None:
            frames.append(env.render())
    return {"return": episode_return, "length": length}


def write_mp4(frames: list[np.ndarray], path: str | Path, fps: float) -> Path:
    """H.264 MP4 of RGB frames ``[H, W, 3]`` (cropped to even sizes, which yuv420p needs)."""
    try:
        import imageio_ffmpeg
    except ImportError as err:
        raise ConfigError("videos need imageio-ffmpeg: pip install 'rltrain[video]' (or imageio-ffmpeg)") from err
    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = (s - s % 2 for s in frames[0].shape[:2])
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1, quality=7)
    writer.send(None)  # start the encoder
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame[:height, :width, :3], dtype=np.uint8))
    finally:
        writer.close()
    return path


def fps_of(env: gym.Env) -> float:
    return float(env.metadata.get("render_fps") or 30)


def record_episode(env: str | EnvSpec | gym.Env, policy, path: str | Path, seed: int, *,
                   max_episode_steps: int | None = None, device: torch.device | str = "cpu", **env_kwargs) -> dict:
    """Run one episode of ``policy`` rendered and write it to ``path`` (an MP4).

    Args:
        env: an env id or spec (made here with ``render_mode="rgb_array"``, then closed) or an env
            already made with that render mode.
        policy: torch batches ``[1, obs] -> [1, ...]``, with optional ``reset`` / ``record`` hooks.
        seed: the episode's reset seed.

    Returns:
        ``return``, ``length``, ``frames`` (``length + 1``) and ``path``.
    """
    own = not isinstance(env, gym.Env)
    if own:
        env = make_render_env(env, max_episode_steps, **env_kwargs)
    elif env.render_mode != "rgb_array":
        raise ValueError(f"record_episode needs an env made with render_mode='rgb_array', got {env.render_mode!r}")
    try:
        frames: list[np.ndarray] = []
        result = run_episode(env, policy, seed, device, frames)
        write_mp4(frames, path, fps_of(env))
    finally:
        if own:
            env.close()
    return {**result, "frames": len(frames), "path": str(path)}


class VideoRecorder:
    """Training-time videos (``trainer.video_every``): one rendered evaluation episode written to
    ``<run dir>/videos/step_<step>.mp4``.

    Args:
        env: the evaluation env's id or spec.
        folder: where the MP4 files go.
        max_episode_steps: the run's time limit (``env.max_episode_steps``).
        env_kwargs: the run's ``env.kwargs``.
    """

    def __init__(self, env: str | EnvSpec, folder: str | Path, max_episode_steps: int | None = None,
                 **env_kwargs):
        setup_headless_rendering(env)  # a missing GL backend stops the run before training, not at its first video
        self.env = env
        self.folder = Path(folder)
        self.max_episode_steps = max_episode_steps
        self.env_kwargs = env_kwargs

    def record(self, policy, step: int, seed: int, device: torch.device | str = "cpu") -> dict:
        """Record one episode of ``policy`` (in eval mode already); returns :func:`record_episode`'s result."""
        path = self.folder / f"step_{step:09d}.mp4"
        return record_episode(self.env, policy, path, seed, max_episode_steps=self.max_episode_steps, device=device,
                              **self.env_kwargs)
