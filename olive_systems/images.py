"""Per-accelerator Docker images for the docker system: build them, name them, describe them.

Each image is a folder under images/ (cpu, openvino, cuda): a Dockerfile and a requirements.txt
that pins the whole dependency closure. `build_image` puts a build context together in a temp
folder (the Dockerfile, the requirements and their wheels, the olive-systems wheel of this
checkout, images/check_image.py) and builds it with the Docker SDK. Nothing is fetched inside the
build: wheels come from the host with `pip download` through a host-side cache, images/.wheels/,
so a second build downloads nothing. The tag is a digest of what the image installs (Dockerfile,
pins, check script, olive-systems version): an unchanged image is never rebuilt, a changed one
never reuses a stale tag.

    python -m olive_systems.images build cpu openvino [--base-image python:3.11-slim]
    python -m olive_systems.images info cpu          # /opt/olive-image.json of the image
    python -m olive_systems.images check openvino    # runs a tiny model on the image's EP
    python -m olive_systems.images tag cpu
    python -m olive_systems.images prune             # removes olive-systems/<name> images of old tags

Only the standard library is imported here; the Docker SDK (extra `docker`) inside functions.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

IMAGES = ("cpu", "openvino", "cuda")
REPOSITORY = "olive-systems"
DEFAULT_BASE_IMAGE = "olive-systems/base:bookworm"
PYTHON_VERSION = "3.11"
INFO_PATH = "/opt/olive-image.json"
CHECK_SCRIPT = "/opt/olive/check_image.py"
REPO_ROOT = Path(__file__).resolve().parent.parent

# The execution provider each image exists for.
EXECUTION_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cuda": "CUDAExecutionProvider",
}

# Wheels the image's Python (CPython 3.11, glibc 2.36 in Debian bookworm and python:3.11-slim)
# can install. pip does not widen an explicit manylinux_2_28 to older glibc tags, and NVIDIA's
# wheels are tagged manylinux_2_27, so every tag from 2_28 down to 2_17 is named.
PLATFORMS = (
    *(f"manylinux_2_{minor}_x86_64" for minor in range(28, 16, -1)),
    "manylinux2014_x86_64",
    "any",
)

# Files of this checkout that go into the olive-systems wheel.
_PACKAGE_FILES = ("pyproject.toml", "README.md", "setup.py", "setup.cfg", "LICENSE")


class ImageError(RuntimeError):
    """An image could not be built or read; the message says why and what to do."""


def _image_dir(name: str, repo_root: Path) -> Path:
    if name not in IMAGES:
        raise ImageError(f"unknown image {name!r}; one of {', '.join(IMAGES)}")
    folder = Path(repo_root) / "images" / name
    if not (folder / "Dockerfile").is_file() or not (folder / "requirements.txt").is_file():
        raise ImageError(
            f"{folder} has no Dockerfile and requirements.txt: images are built from an "
            "olive-systems checkout (pass repo_root=)"
        )
    return folder


def system_image(config: dict, override: str) -> str:
    """The image a docker or AzureML system runs: config[override] when given, else the tag of
    its images/ folder (config["image"], cpu by default)."""
    return config.get(override) or image_tag(config.get("image", "cpu"))


def image_tag(name: str, repo_root: Path | str = REPO_ROOT) -> str:
    """`olive-systems/<name>:<12 hex>`: sha256 of the image folder's Dockerfile and
    requirements.txt, images/check_image.py and the olive-systems version.

    The olive_systems sources are left out on purpose: the docker system mounts the host's
    source over the image's copy, so an edit to the code needs no new image; a change to what
    the image installs (Dockerfile, pins) or a new release does."""
    from olive_systems import __version__

    repo_root = Path(repo_root)
    folder = _image_dir(name, repo_root)
    h = hashlib.sha256()
    for part in (
        (folder / "Dockerfile").read_bytes(),
        (folder / "requirements.txt").read_bytes(),
        (repo_root / "images" / "check_image.py").read_bytes(),
        __version__.encode(),
    ):
        h.update(hashlib.sha256(part).digest())
    return f"{REPOSITORY}/{name}:{h.hexdigest()[:12]}"


def _docker_client():
    try:
        import docker
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImageError("the Docker SDK is missing: pip install 'olive-systems[docker]'") from e
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:
        raise ImageError(f"cannot reach the Docker daemon ({e}); start dockerd or set DOCKER_HOST") from e
    return client


def _image_exists(client, ref: str) -> bool:
    from docker.errors import ImageNotFound

    try:
        client.images.get(ref)
        return True
    except ImageNotFound:
        return False


def _log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def _pip(args: list[str], what: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ImageError(f"{what} failed ({' '.join(cmd)}):\n{tail}")


def fetch_wheels(requirements: Path, dest: Path, cache: Path) -> None:
    """Puts the wheel of every pin in `requirements` into `dest`, for CPython 3.11 manylinux
    x86_64 whatever the host is. Wheels come from `cache` when it has them; the missing ones are
    downloaded into it first (only then is an index asked)."""
    dest.mkdir(parents=True, exist_ok=True)
    cache.mkdir(parents=True, exist_ok=True)
    target = [
        "--only-binary=:all:", "--no-deps", "--python-version", PYTHON_VERSION,
        "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)],
        "-r", str(requirements),
    ]  # fmt: skip
    offline = ["download", "-q", "--no-index", "--find-links", str(cache), *target, "-d", str(dest)]
    try:
        _pip(offline, "collecting the wheels from the cache")
        return
    except ImageError:
        pass
    _log(f"downloading the wheels of {requirements} into {cache}")
    _pip(["download", "-q", *target, "-d", str(cache)], "pip download")
    _pip(offline, "collecting the wheels from the cache")


def build_package_wheel(repo_root: Path, dest: Path) -> Path:
    """Builds the olive-systems wheel from a clean copy of the checkout's package files (so no
    stale build/ folder can leak old modules into it)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="olive-pkg-") as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for f in _PACKAGE_FILES:
            if (repo_root / f).is_file():
                shutil.copy2(repo_root / f, src / f)
        shutil.copytree(
            repo_root / "olive_systems",
            src / "olive_systems",
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo"),
        )
        args = ["wheel", "-q", "--no-deps", str(src), "-w", str(dest)]
        # Build in this interpreter when it has a setuptools that reads the pyproject.toml (PEP
        # 639 license string: >= 77), else let pip make an isolated build environment.
        try:
            from importlib.metadata import version

            if int(version("setuptools").split(".")[0]) >= 77:
                args.insert(1, "--no-build-isolation")
        except Exception:
            pass
        _pip(args, "building the olive-systems wheel")
    wheels = sorted(dest.glob("olive_systems-*.whl"))
    if len(wheels) != 1:
        raise ImageError(f"expected one olive-systems wheel in {dest}, found {wheels}")
    return wheels[0]


def assemble_context(name: str, ctx: Path, repo_root: Path | str = REPO_ROOT, wheel_cache: Path | None = None) -> Path:
    """Writes the build context of image `name` into `ctx`: Dockerfile, wheels/ (requirements.txt
    and its wheels), pkg/ (the olive-systems wheel) and check_image.py."""
    repo_root = Path(repo_root)
    folder = _image_dir(name, repo_root)
    cache = Path(wheel_cache) if wheel_cache else repo_root / "images" / ".wheels"
    ctx.mkdir(parents=True, exist_ok=True)
    shutil.copy2(folder / "Dockerfile", ctx / "Dockerfile")
    shutil.copy2(repo_root / "images" / "check_image.py", ctx / "check_image.py")
    wheels = ctx / "wheels"
    wheels.mkdir(exist_ok=True)
    shutil.copy2(folder / "requirements.txt", wheels / "requirements.txt")
    fetch_wheels(folder / "requirements.txt", wheels, cache)
    build_package_wheel(repo_root, ctx / "pkg")
    return ctx


def build_image(
    name: str,
    base_image: str = DEFAULT_BASE_IMAGE,
    repo_root: Path | str = REPO_ROOT,
    *,
    wheel_cache: Path | str | None = None,
    force: bool = False,
    verbose: bool = True,
) -> str:
    """Builds image `name` (one of IMAGES) on `base_image` and returns its tag. Does nothing but
    return the tag when an image with that tag exists (unless `force`)."""
    repo_root = Path(repo_root)
    tag = image_tag(name, repo_root)
    client = _docker_client()
    if not force and _image_exists(client, tag):
        if verbose:
            _log(f"{tag} exists")
        return tag
    if base_image == DEFAULT_BASE_IMAGE and not _image_exists(client, base_image):
        raise ImageError(
            f"base image {base_image} is missing: build it with `make base-image` "
            "(images/base/build.sh), or pass a public base such as --base-image python:3.11-slim"
        )
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"olive-image-{name}-") as tmp:
        ctx = assemble_context(name, Path(tmp), repo_root, Path(wheel_cache) if wheel_cache else None)
        if verbose:
            _log(f"building {tag} from {base_image} (context ready in {time.monotonic() - start:.0f} s)")
        _docker_build(client, ctx, tag, base_image, verbose)
    if verbose:
        _log(f"built {tag} in {time.monotonic() - start:.0f} s")
    return tag


def _docker_build(client, ctx: Path, tag: str, base_image: str, verbose: bool) -> None:
    # The low-level API streams the build log, so a long build shows its steps as they run.
    # network_mode none: the build installs from the context alone and must not need more.
    log: list[str] = []
    for chunk in client.api.build(
        path=str(ctx),
        tag=tag,
        buildargs={"BASE_IMAGE": base_image},
        rm=True,
        forcerm=True,
        network_mode="none",
        decode=True,
    ):
        if "stream" in chunk:
            line = chunk["stream"].rstrip()
            if line:
                log.append(line)
                if verbose and (line.startswith(("Step ", "{")) or "Using cache" in line):
                    _log(line)
        elif "error" in chunk:
            tail = "\n".join(log[-25:])
            raise ImageError(f"docker build of {tag} failed: {chunk['error'].strip()}\n{tail}")


def _resolve(name_or_tag: str, repo_root: Path | str = REPO_ROOT) -> str:
    return image_tag(name_or_tag, repo_root) if name_or_tag in IMAGES else name_or_tag


def _run(client, tag: str, command: list[str], **kwargs: Any) -> bytes:
    """Runs `command` in a throwaway container of `tag` the way jobs run: no network, as this
    user, read-only root file system with a tmpfs /tmp (HOME)."""
    from docker.errors import APIError, ContainerError

    if not _image_exists(client, tag):  # else containers.run would try to pull it from a registry
        raise ImageError(f"image {tag} is missing: python -m olive_systems.images build NAME (or make images)")
    user = f"{os.getuid()}:{os.getgid()}" if hasattr(os, "getuid") else None
    try:
        return client.containers.run(
            tag,
            command,
            network_mode="none",
            remove=True,
            init=True,
            user=user,
            read_only=True,
            tmpfs={"/tmp": "rw,exec,nosuid,size=1g"},
            stdout=True,
            stderr=False,
            **kwargs,
        )
    except ContainerError as e:
        detail = e.stderr.decode(errors="replace").strip() if e.stderr else str(e)
        raise ImageError(f"{' '.join(command)} failed in {tag}: {detail}") from e
    except APIError as e:
        raise ImageError(f"docker could not run {tag}: {e.explanation or e}") from e


def image_info(tag: str) -> dict:
    """The image's /opt/olive-image.json (name, onnxruntime_version, available_providers, ...)
    read through a short container run. `tag` may also be an image name (cpu, openvino, cuda)."""
    client = _docker_client()
    tag = _resolve(tag)
    info = json.loads(_run(client, tag, ["cat", INFO_PATH]))
    info["tag"] = tag
    return info


def check_image(tag: str, **run_kwargs: Any) -> dict:
    """Runs a tiny model in a container of `tag` on the image's execution provider and returns
    what images/check_image.py reports (session_providers among it). For cuda pass
    device_requests=[docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]."""
    client = _docker_client()
    tag = _resolve(tag)
    if not _image_exists(client, tag):
        raise ImageError(f"image {tag} is missing: python -m olive_systems.images build NAME (or make images)")
    labels = client.images.get(tag).labels or {}
    name = labels.get("org.olive-systems.image.name", "")
    provider = labels.get("org.olive-systems.image.execution_provider")
    if not provider:
        raise ImageError(f"{tag} is not an olive-systems image (no execution_provider label)")
    out = _run(client, tag, ["python", CHECK_SCRIPT, "--name", name, "--provider", provider, "--session"], **run_kwargs)
    return json.loads(out.decode().strip().splitlines()[-1])


def prune(keep_current: bool = True, repo_root: Path | str = REPO_ROOT) -> list[str]:
    """Removes olive-systems/<name> images whose tag is not the current one; returns their tags."""
    client = _docker_client()
    removed = []
    for name in IMAGES:
        try:
            current = image_tag(name, repo_root) if keep_current else None
        except ImageError:
            current = None
        for image in client.images.list(name=f"{REPOSITORY}/{name}"):
            for tag in image.tags:
                if tag != current:
                    client.images.remove(tag, noprune=False)
                    removed.append(tag)
    return removed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m olive_systems.images", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build images (skips those whose tag exists)")
    b.add_argument("names", nargs="+", choices=IMAGES)
    b.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    b.add_argument("--force", action="store_true", help="rebuild even if the tag exists")
    i = sub.add_parser("info", help="print the image's /opt/olive-image.json")
    i.add_argument("name", help="image name or tag")
    c = sub.add_parser("check", help="run a tiny model in the image on its EP")
    c.add_argument("name", help="image name or tag")
    c.add_argument("--gpus", action="store_true", help="give the container the host's GPUs")
    t = sub.add_parser("tag", help="print the tag an image would have")
    t.add_argument("names", nargs="+", choices=IMAGES)
    sub.add_parser("prune", help="remove olive-systems images of old tags")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "build":
            for name in args.names:
                print(build_image(name, base_image=args.base_image, force=args.force))
        elif args.cmd == "info":
            print(json.dumps(image_info(args.name), indent=2))
        elif args.cmd == "check":
            kwargs: dict[str, Any] = {}
            if args.gpus:
                import docker

                kwargs["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
            print(json.dumps(check_image(args.name, **kwargs), indent=2))
        elif args.cmd == "tag":
            for name in args.names:
                print(image_tag(name))
        elif args.cmd == "prune":
            for tag in prune():
                print(f"removed {tag}")
    except ImageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
