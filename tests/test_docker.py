"""The Dockerfiles install rltrain the way README's quick start does, from what they copy in.

No Docker engine runs here, so the test reads each Dockerfile, checks its install command against
README's, and builds a wheel from exactly the files the image copies: a file the package needs but
the image leaves out (a config group, the README that pyproject names) fails the build or is
missing from the wheel.
"""

from __future__ import annotations

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
