"""What a recipe needs installed: `run(..., packages=True)` lists it, `run(..., setup=True)` installs it.

Each pass declares the distributions it imports (Pass.depends_on); the recipe adds those of its
data configs (datasets), its search (optuna), its shared cache and systems (azure, docker), and the
ONNX Runtime build of each target execution provider (onnxruntime-gpu for CUDA, ...), which takes
the place of plain onnxruntime. Versions are the pins olive-systems itself declares: its extras
(pyproject.toml) and, for an EP build, the requirements.txt of the docker image made for that EP.
A package config (file or dict) adds to or overrides them:

    {"passes": {"OnnxConversion": {"requirements": ["torch==2.5.1"]}},
     "execution_providers": {"CUDAExecutionProvider": ["onnxruntime-gpu==1.31.1"]},
     "requirements": ["my-metrics-package"]}
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from .errors import OliveSystemsError, RecipeError

REPO_ROOT = Path(__file__).resolve().parent.parent
# The ONNX Runtime distribution each execution provider comes in.
EP_RUNTIMES = {
    "CPUExecutionProvider": "onnxruntime",
    "CUDAExecutionProvider": "onnxruntime-gpu",
    "TensorrtExecutionProvider": "onnxruntime-gpu",
    "OpenVINOExecutionProvider": "onnxruntime-openvino",
    "DmlExecutionProvider": "onnxruntime-directml",
    "QNNExecutionProvider": "onnxruntime-qnn",
}
PACKAGE_CONFIG_KEYS = {"passes", "execution_providers", "requirements"}


def _name(requirement: str) -> str:
    """The normalized distribution name of a requirement string ('Foo_Bar>=1; extra == "x"' -> 'foo-bar')."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)).lower()


def declared_pins() -> dict[str, str]:
    """name -> requirement (without its extra marker) of every package olive-systems declares: the
    checkout's pyproject.toml when running from one (it may be newer than the installed metadata),
    else the installed distribution's metadata."""
    requirements: list[str] = []
    pyproject = REPO_ROOT / "pyproject.toml"
    project = {}
    if pyproject.is_file():
        import tomllib

        project = tomllib.loads(pyproject.read_text()).get("project", {})
    if project.get("name") == "olive-systems":
        requirements = [*project.get("dependencies", []),
                        *(r for extra in project.get("optional-dependencies", {}).values() for r in extra)]
    else:
        from importlib import metadata

        requirements = metadata.requires("olive-systems") or []
    pins = {}
    for requirement in requirements:
        text = requirement.split(";")[0].strip()
        if text and not text.startswith("olive-systems"):
            pins.setdefault(_name(text), text)
    return pins


def _image_pins() -> dict[str, str]:
    """name -> pinned requirement from the docker images' requirements.txt (the EP builds live there)."""
    pins = {}
    for path in sorted((REPO_ROOT / "images").glob("*/requirements.txt")):
        for line in path.read_text().splitlines():
            text = line.split("#")[0].strip()
            if text and not text.startswith("-") and "==" in text:
                pins.setdefault(_name(text), text.split(";")[0].strip())
    return pins


def read_package_config(package_config) -> dict:
    if package_config is None:
        return {}
    if isinstance(package_config, (str, Path)):
        path = Path(package_config)
        if not path.is_file():
            raise RecipeError(f"package_config '{package_config}' does not exist", "give the path of a JSON or YAML file, or a dict")
        import yaml

        try:
            package_config = yaml.safe_load(path.read_text())  # YAML reads JSON too
        except yaml.YAMLError as error:
            raise RecipeError(f"package_config {path.name}: not JSON or YAML ({error})", "fix the file") from None
    if not isinstance(package_config, dict):
        raise RecipeError(f"package_config is a {type(package_config).__name__}, not a mapping",
                          f"give a mapping with keys {', '.join(sorted(PACKAGE_CONFIG_KEYS))}")
    unknown = sorted(set(package_config) - PACKAGE_CONFIG_KEYS)
    if unknown:
        raise RecipeError(f"package_config: unknown key(s) {', '.join(unknown)}",
                          f"use {', '.join(sorted(PACKAGE_CONFIG_KEYS))} (see olive_systems/workflow_packages.py)")
    return package_config


def recipe_requirements(recipe: dict, package_config=None) -> list[str]:
    """The requirements (pinned where olive-systems pins them) of a loaded recipe, sorted by name."""
    from .passes import get_pass_class

    config = read_package_config(package_config)
    pass_overrides = config.get("passes") or {}
    unknown = sorted(set(pass_overrides) - {entry["type"] for entry in recipe["passes"].values()})
    if unknown:
        raise RecipeError(f"package_config.passes: {', '.join(unknown)} {'is' if len(unknown) == 1 else 'are'} "
                          "not a pass type of this recipe", "name the pass types the recipe uses")
    names: list[str] = []
    explicit: list[str] = []
    for entry in recipe["passes"].values():
        names.extend(get_pass_class(entry["type"]).depends_on)
        explicit.extend((pass_overrides.get(entry["type"]) or {}).get("requirements") or [])
    if recipe.get("data_configs"):
        names.append("datasets")
    if _searches(recipe):
        names.append("optuna")
    shared = recipe.get("engine", {}).get("shared_cache")
    if shared:
        names += ["azure-storage-blob", "azure-identity"]
    for system in recipe.get("systems", {}).values():
        names += {"DockerSystem": ["docker"], "AzureMLSystem": ["azure-ai-ml", "azure-identity"]}.get(system.get("type"), [])
    # Sessions on this machine open on its systems' EPs: their ONNX Runtime builds replace plain
    # onnxruntime (they all import as onnxruntime and cannot sit side by side).
    pins = {**_image_pins(), **declared_pins()}  # olive-systems's own pin first, else the images'
    runtimes = _local_runtimes(recipe, config.get("execution_providers") or {}, pins)
    if runtimes:
        names = [n for n in names if _name(n) != "onnxruntime"]
        explicit.extend(runtimes)
    explicit.extend(config.get("requirements") or [])

    chosen: dict[str, str] = {}
    for name in names:
        chosen.setdefault(_name(name), pins.get(_name(name), name))
    for requirement in explicit:  # given by the user or an EP: replaces olive-systems's pin
        chosen[_name(requirement)] = requirement
    return [chosen[key] for key in sorted(chosen)]


def _searches(recipe: dict) -> bool:
    if recipe.get("search_strategy") or (recipe.get("engine") or {}).get("search_strategy"):
        return True
    text = json.dumps([entry.get("config") or {} for entry in recipe["passes"].values()])
    return '"choices"' in text or '"range"' in text


def _local_runtimes(recipe: dict, ep_overrides: dict, pins: dict[str, str]) -> list[str]:
    """The ONNX Runtime build of each execution provider the recipe's local systems name (a docker
    or AzureML system brings its own, in its image), pinned by pins (name -> requirement)."""
    runtimes = []
    for system in recipe.get("systems", {}).values():
        if system.get("type", "LocalSystem") != "LocalSystem":
            continue
        for accelerator in system.get("accelerators") or []:
            for ep in accelerator.get("execution_providers") or []:
                if ep in ep_overrides:
                    runtimes.extend(ep_overrides[ep])
                    continue
                if ep not in EP_RUNTIMES:
                    raise RecipeError(f"execution provider {ep}: olive-systems does not know which package provides it",
                                      "name its package in package_config.execution_providers")
                key = EP_RUNTIMES[ep]
                runtimes.append(pins.get(key, key))
    return list(dict.fromkeys(runtimes))


def missing_requirements(requirements: list[str]) -> list[str]:
    """Those of the requirements this Python environment does not satisfy."""
    from importlib import metadata

    from packaging.requirements import Requirement

    missing = []
    for text in requirements:
        requirement = Requirement(text)
        try:
            version = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            missing.append(text)
            continue
        if requirement.specifier and not requirement.specifier.contains(version, prereleases=True):
            missing.append(text)
    return missing


def install(requirements: list[str]) -> list[str]:
    """pip-install the requirements this environment lacks; returns them. A failed install is an
    error with pip's last lines."""
    missing = missing_requirements(requirements)
    if not missing:
        return []
    done = subprocess.run([sys.executable, "-m", "pip", "install", *missing], capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-5:])
        raise OliveSystemsError(f"pip could not install {', '.join(missing)}:\n{tail}",
                                "check the package names and versions (package_config) and that the index is reachable")
    return missing


def write_requirements(requirements: list[str], folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "requirements.txt"
    path.write_text("# What this recipe needs (olive-systems run --packages); install with pip install -r\n"
                    + "".join(f"{r}\n" for r in requirements))
    return path
