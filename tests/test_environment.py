"""The environment is the pinned one: conda and pip name the same packages at the same versions,
and the torch that runs is the pinned CPU build."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_TO_PIP = {"pytorch": "torch"}
NOT_IN_PIP = {"python", "pip"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict:
    pins = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = re.split(r"(==|=)", line, maxsplit=1) if "=" in line else (line, "", "")
        pins[_normalise(CONDA_TO_PIP.get(name.strip(), name.strip()))] = version.strip()
    return pins


def _pip_pins() -> dict:
    lines = []
    for name in ("requirements.txt", "requirements-nodeps.txt"):
        lines += (ROOT / name).read_text().splitlines()
    return _pins(lines)


def _conda_pins() -> dict:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = _pins(conda + pip)
    return {name: version for name, version in pins.items() if name not in NOT_IN_PIP}


def test_environment_yml_and_requirements_pin_the_same_packages():
    assert _conda_pins() == _pip_pins()


def test_environment_installs_the_project_itself():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip


def test_the_installed_torch_is_the_pinned_cpu_build():
    import torch

    pinned = _pip_pins()["torch"]
    # the Makefile installs torch on its own, before the requirements: it must name the same version
    assert re.findall(r"pip install\b[^\n]*\btorch==([\w.]+)", (ROOT / "Makefile").read_text()) == [pinned]
    assert torch.__version__.split("+")[0] == pinned
    assert torch.version.cuda is None  # the CPU wheel, not a multi-GB CUDA build
