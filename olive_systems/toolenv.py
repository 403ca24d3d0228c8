"""Tool environments: a pass whose library needs other pins than the host's (onnxruntime-genai's
model builder needs transformers 5, the rest of olive-systems stays on 4.57 for BERT's full fusion)
declares them, and runs its tool in a venv layered over this interpreter's packages: only the
pinned packages are installed there (seconds, not a second torch), and they shadow the host's.

Built once per pin set, under a lock, and marked complete last, so a failed or killed install is
never reused. Where the current interpreter already satisfies the pins (an image built for them)
it is used as is."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import site
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from .errors import PassError

MARKER = ".olive-systems-complete"


def _root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "olive-systems" / "toolenvs"


def _satisfied(pins: list[str]) -> bool:
    for pin in pins:
        name, _, version = pin.partition("==")
        try:
            if metadata.version(name) != version:
                return False
        except metadata.PackageNotFoundError:
            return False
    return True


def tool_python(pins: list[str], log=print) -> Path:
    """An interpreter that sees the host's packages with `pins` (name==version) on top."""
    if _satisfied(pins):
        return Path(sys.executable)
    host_site = [p for p in site.getsitepackages() if Path(p).is_dir()]
    digest = hashlib.sha256("\n".join(sorted(pins) + host_site + [sys.version]).encode()).hexdigest()[:16]
    folder = _root() / digest
    python = folder / "bin" / "python"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f"{digest}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs building the same environment wait for each other
        if (folder / MARKER).exists():
            return python
        shutil.rmtree(folder, ignore_errors=True)
        log(f"building a tool environment for {' '.join(pins)} in {folder} (once)")
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True, capture_output=True)
        own_site = next((folder / "lib").glob("python*/site-packages"))
        (own_site / "olive_systems_host.pth").write_text("\n".join(host_site) + "\n")
        install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *pins],
                                 capture_output=True, text=True)
        if install.returncode != 0:
            shutil.rmtree(folder, ignore_errors=True)
            tail = (install.stderr or install.stdout).strip().splitlines()[-3:]
            raise PassError(f"could not install {' '.join(pins)} for the tool environment: {' | '.join(tail)}",
                            f"make PyPI reachable, or install exactly {' '.join(pins)} in this environment")
        (folder / MARKER).write_text("\n".join(pins))
    return python
