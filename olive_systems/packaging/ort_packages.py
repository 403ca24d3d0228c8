"""The ONNX Runtime wheel that evaluated the candidates, for the zip's ONNXRuntimePackages/.

A candidate's `runtime` names the package and version that scored it (onnxruntime,
onnxruntime-openvino, onnxruntime-gpu); without one, the onnxruntime installed here did. Each
wheel is looked up where it costs nothing first: images/.wheels/ (the wheels fetched for the
docker images), pip's cache of locally built wheels, then `pip download`, which reads pip's HTTP
cache before it asks an index. A wheel that cannot be had is not fatal: the caller writes what
to install instead.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ..ort import installed_runtime
from ..output import ModelOutput

# Where `olive_systems.images` keeps the wheels it fetched for the images (a source checkout only).
IMAGE_WHEELS = Path(__file__).resolve().parents[2] / "images" / ".wheels"
DOWNLOAD_TIMEOUT_S = 600


def runtime_of(model: ModelOutput) -> dict | None:
    """The package that evaluated `model` (the engine records it), else the one installed here."""
    runtime = model.runtime or {}
    if runtime.get("package") and runtime.get("version"):
        return {"package": runtime["package"], "version": str(runtime["version"])}
    return installed_runtime()


def pip_command(package: str, version: str) -> str:
    return f"pip download --no-deps --only-binary=:all: {package}=={version} -d ONNXRuntimePackages"


def find_wheel(package: str, version: str, dest: Path) -> Path | None:
    """The wheel of package==version, put in dest; None when no source has it."""
    found = _pick(IMAGE_WHEELS.glob("*.whl") if IMAGE_WHEELS.is_dir() else [], package, version)
    found = found or _pick(_pip_cache_wheels(package), package, version)
    if found is not None:
        return found
    return _download(package, version, dest)


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _matches(path: Path, package: str, version: str) -> bool:
    # {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl
    parts = path.name[:-len(".whl")].split("-")
    return len(parts) >= 5 and _normalize(parts[0]) == _normalize(package) and parts[1] == version


def _pick(paths, package: str, version: str) -> Path | None:
    """Of the wheels of package==version, one this interpreter can install if there is one."""
    matching = sorted(p for p in paths if p.is_file() and _matches(p, package, version))
    if not matching:
        return None
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename

        supported = set(sys_tags())
        return next((p for p in matching if parse_wheel_filename(p.name)[3] & supported), matching[0])
    except Exception:  # `packaging` absent or an odd file name: any wheel of that version will do
        return matching[0]


def _pip_cache_wheels(package: str) -> list[Path]:
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "cache", "list", "--format=abspath", f"{_normalize(package)}-*"],
                              capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [Path(line) for line in proc.stdout.splitlines() if line.endswith(".whl")] if proc.returncode == 0 else []


def _download(package: str, version: str, dest: Path) -> Path | None:
    dest.mkdir(parents=True, exist_ok=True)
    try:
        # Few retries and a short timeout: an offline machine should not hold the run for minutes.
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                               "--retries", "1", "--timeout", "30", f"{package}=={version}", "-d", str(dest)],
                              capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _pick(dest.glob("*.whl"), package, version) if proc.returncode == 0 else None
