"""The Dockerfiles install rltrain the way README's quick start does, from what they copy in.

No Docker engine runs here, so the test reads each Dockerfile, checks its install command against
README's, and builds a wheel from exactly the files the image copies: a file the package needs but
the image leaves out (a config group, the README that pyproject names) fails the build or is
missing from the wheel.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILES = sorted((ROOT / "docker").glob("Dockerfile*"))


def readme_install_command() -> list[str]:
    """The install half of README's quick-start command (``... pip install -e . && python3 -m rltrain``)."""
    match = re.search(r"```bash\n(python3 -m pip install -e \.) && python3 -m rltrain\n```", (ROOT / "README.md").read_text())
    assert match, "README's quick start no longer has the install command this test compares with"
    return shlex.split(match.group(1))


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_there_is_a_cpu_and_a_cuda_image():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile", "Dockerfile.cuda"}


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_installs_rltrain_like_readme_and_runs_it(dockerfile):
    steps = instructions(dockerfile)
    runs = [arg for op, arg in steps if op == "RUN" and "rltrain" not in arg and "-e" in shlex.split(arg)]
    assert len(runs) == 1, "one RUN installs the package"
    command = shlex.split(runs[0])
    readme = readme_install_command()
    assert command[:4] == readme[:4] == ["python3", "-m", "pip", "install"]
    target = next(arg for arg in command if arg.startswith("."))
    assert re.fullmatch(r"\.(\[[a-z0-9,]+\])?", target), f"installs {target!r}, not the checkout as README does"
    assert "-e" in command
    torch_index = [arg for op, arg in steps if op == "RUN" and "torch" in arg]
    assert torch_index and "download.pytorch.org" in torch_index[0], "torch must come from PyTorch's index first"
    assert dict(steps)["ENTRYPOINT"] == '["python3", "-m", "rltrain"]'
    volumes = dict(steps)["VOLUME"]
    env = dict(steps)["ENV"]
    assert "/app/runs" in volumes and "MINARI_DATASETS_PATH=/data/minari" in env and "/data/minari" in volumes


@pytest.mark.slow
@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_copied_files_build_a_complete_package(dockerfile, tmp_path):
    context = tmp_path / "context"
    context.mkdir()
    for op, arg in instructions(dockerfile):
        if op == "COPY":
            *sources, destination = shlex.split(arg)
            for source in sources:
                src = ROOT / source
                dst = context / destination / src.name if destination.endswith("/") else context / destination
                if src.is_dir():
                    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(src, dst)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
                    str(context)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("rltrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped_configs = {str(p.relative_to(ROOT / "configs")) for p in (ROOT / "configs").rglob("*.yaml")}
    assert {f"rltrain/configs/{c}" for c in shipped_configs} <= names, "configs missing from the image's package"
    assert {"rltrain/__main__.py", "rltrain/make_dataset.py", "rltrain/data/minari_data.py"} <= names


# A marker in README's commands -> the extra it needs.
README_EXTRAS = {"logger=wandb": "wandb", "logger=tensorboard": "tensorboard", "plot_curves.py": "plots",
                 "hydra/launcher=": "launchers", "hparams_search=": "optuna", "lunarlander": "box2d"}


def readme_commands() -> str:
    return "\n".join(re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.S))


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_image_pins_torch_records_the_commit_and_has_the_extras_readme_uses(dockerfile):
    steps = instructions(dockerfile)
    args = dict(arg.split("=", 1) for op, arg in steps if op == "ARG")
    assert re.fullmatch(r"\d+\.\d+\.\d+", args["TORCH_VERSION"]), "torch pinned to one release"
    (torch_install,) = [arg for op, arg in steps if op == "RUN" and "torch" in arg]
    assert '"torch==${TORCH_VERSION}"' in torch_install
    assert "GIT_COMMIT" in args and "RLTRAIN_GIT_COMMIT=${GIT_COMMIT}" in dict(steps)["ENV"]
    install = next(arg for op, arg in steps if op == "RUN" and "-e" in shlex.split(arg) and "rltrain" not in arg)
    installed = set(re.search(r"\.\[([a-z0-9,]+)\]", install).group(1).split(","))
    commands = readme_commands()
    needed = {extra for marker, extra in README_EXTRAS.items() if marker in commands}
    assert {"wandb", "tensorboard", "plots", "launchers", "optuna"} <= needed, "README's commands changed"
    assert needed <= installed, f"extras README's commands use but the image lacks: {needed - installed}"


def test_cuda_image_uses_the_base_flavour_and_a_cuda_build_of_torch():
    steps = instructions(ROOT / "docker" / "Dockerfile.cuda")
    image = dict(steps)["FROM"]
    assert re.fullmatch(r"nvidia/cuda:[\d.]+-base-ubuntu[\d.]+", image), f"{image}: torch's wheels carry CUDA's libraries"
    args = dict(arg.split("=", 1) for op, arg in steps if op == "ARG")
    major_minor = "".join(re.search(r"cuda:(\d+)\.(\d+)", image).groups())
    assert args["TORCH_CUDA"] == f"cu{major_minor}", "torch's CUDA build matches the base image's CUDA"


def test_git_commit_comes_from_the_build_argument_without_a_checkout():
    """In the image there is no .git: git fails (GIT_DIR points nowhere here) and the GIT_COMMIT build
    argument, passed on as RLTRAIN_GIT_COMMIT, names the commit."""
    env = {**os.environ, "GIT_DIR": "/nonexistent", "RLTRAIN_GIT_COMMIT": "0123abc"}
    code = "from rltrain.__main__ import _git_commit; print(_git_commit())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert out.stdout.strip() == "0123abc"
    env.pop("GIT_DIR")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    assert re.fullmatch(r"[0-9a-f]{40}", out.stdout.strip()), "a checkout's own HEAD comes first"
