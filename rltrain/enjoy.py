"""``python -m rltrain.enjoy run=<run dir> [checkpoint=last|best|<step>] [episodes=10] [video=false]
[deterministic=true] [seed=0] [env.id=<gymnasium id>]``: watch a trained agent.

Runs ``episodes`` episodes of the run's policy, one after the other in one env (the run's evaluation
env, or ``env.id``), episode ``i`` reset with seed ``seed + i``; prints the mean ± std return (and
D4RL's normalized score where the run's dataset defines references) and writes
``<run dir>/enjoy/<timestamp>/returns.json`` and, with ``video=true``, ``episode_<i>.mp4`` per
episode (``pip install rltrain[video]``; MuJoCo renders headless through EGL or OSMesa).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

from rltrain.cli_args import parse_args
from rltrain.errors import ConfigError

USAGE = __doc__.split("\n\n")[0]
DEFAULTS = {"run": None, "checkpoint": "last", "episodes": 10, "video": False, "deterministic": True, "seed": 0,
            "env.id": None}


def enjoy(args: dict) -> dict:
    """Run the episodes ``args`` asks for; returns what ``returns.json`` holds."""
    from rltrain.agent import load_agent
    from rltrain.video import fps_of, make_render_env, run_episode, write_mp4

    if args["episodes"] < 1:
        raise ConfigError(f"episodes={args['episodes']}: must be >= 1")
    agent = load_agent(args["run"], args["checkpoint"], env_id=args["env.id"])
    out = Path(args["run"]) / "enjoy" / time.strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    task = agent.task
    video = args["video"]
    env = (make_render_env(task.env, task.max_episode_steps, **task.env_kwargs) if video else task.make_env())
    policy = agent.policy(args["deterministic"])
    episodes = []
    try:
        for i in range(args["episodes"]):
            frames = [] if video else None
            episode = run_episode(env, policy, args["seed"] + i, frames=frames)
            if video:
                episode["video"] = write_mp4(frames, out / f"episode_{i}.mp4", fps_of(env)).name
            episodes.append({"seed": args["seed"] + i, **episode})
    finally:
        env.close()
    returns = np.array([e["return"] for e in episodes])
    result = {"run": str(args["run"]), "checkpoint": str(agent.checkpoint), "step": agent.step, "env": task.env_id,
              "deterministic": args["deterministic"], "return_mean": float(returns.mean()),
              "return_std": float(returns.std()), "episodes": episodes}
    score = agent.normalized_score(result["return_mean"])
    if score is not None:
        result["normalized_score"] = score
    (out / "returns.json").write_text(json.dumps(result, indent=2))
    result["out"] = str(out)
    return result


def main(argv: list[str] | None = None) -> None:
    try:
        result = enjoy(parse_args(sys.argv[1:] if argv is None else argv, DEFAULTS, ("run",), USAGE))
    except ConfigError as err:
        print(f"rltrain.enjoy: error: {err}", file=sys.stderr)
        sys.exit(2)
    line = f"{len(result['episodes'])} episodes in {result['env']}: return {result['return_mean']:.2f} ± " \
           f"{result['return_std']:.2f}"
    if "normalized_score" in result:
        line += f" (normalized score {result['normalized_score']:.1f})"
    print(f"{line}\nwrote {result['out']}")


if __name__ == "__main__":
    main()
