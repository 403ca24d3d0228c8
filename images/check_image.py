"""Checks an olive-systems image from the inside and describes it.

Runs at image build time (as the last step of every images/<name>/Dockerfile) and again, on
demand, in a container (`python -m olive_systems.images check NAME`). Standard library plus
onnxruntime (and onnx for --session) only.

  --name NAME                 image name (cpu, openvino, cuda)
  --provider EP               the image's execution provider: must be available
  --providers A,B,...         the exact list get_available_providers() must return (the image's label)
  --onnxruntime-version V     the onnxruntime version the image must have
  --session                   build a tiny ONNX model in memory, run it with EP, and require EP in
                              session.get_providers(), EP to have run its nodes (from the
                              session's profile) and the right numbers out (needs the device)
  --ldd                       require every shared library the EP's provider library links to,
                              except the driver's own (libcuda, libnvidia-*), to resolve
  --write PATH                write the image description (JSON) to PATH
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

# Provided by the host's driver at run time (docker --gpus), never by the image.
DRIVER_LIBS = ("libcuda.so", "libnvidia-", "libnvcuvid", "libdxcore")


def fail(msg: str) -> None:
    print(f"check_image: FAILED: {msg}", file=sys.stderr)
    sys.exit(1)


def ort_distribution() -> tuple[str, str]:
    for name in ("onnxruntime", "onnxruntime-openvino", "onnxruntime-gpu"):
        try:
            return name, metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    fail("no onnxruntime distribution installed")
    raise AssertionError  # unreachable


def bundled_openvino_version(ort_dir: Path) -> str | None:
    # onnxruntime-openvino ships the OpenVINO runtime inside the wheel: capi/libopenvino.so.2025.x.y
    for lib in sorted((ort_dir / "capi").glob("libopenvino.so.*")):
        version = lib.name[len("libopenvino.so.") :]
        if version.count(".") >= 1:
            return version
    try:
        return metadata.version("openvino")
    except metadata.PackageNotFoundError:
        return None


def check_session(provider: str) -> list[str]:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    b = rng.standard_normal((3,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["xwb"]),
            helper.make_node("Relu", ["xwb"], ["y"]),
        ],
        "olive_image_check",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    # The model stays in memory and the profile goes to a temp folder (HOME=/tmp), so this works
    # as any user on a read-only root file system.
    with tempfile.TemporaryDirectory(prefix="olive-check-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tmp, "profile")
        sess = ort.InferenceSession(model.SerializeToString(), options, providers=[provider])
        used = sess.get_providers()
        if provider not in used:
            fail(f"session asked for {provider} but runs on {used}")
        x = rng.standard_normal((2, 4)).astype(np.float32)
        (y,) = sess.run(None, {"x": x})
        events = json.loads(Path(sess.end_profiling()).read_text())
    expected = np.maximum(x @ w + b, 0)
    if not np.allclose(y, expected, atol=1e-4):
        fail(f"{provider} computed {y.tolist()}, expected {expected.tolist()}")
    # Which EP ran the nodes: a registered EP that takes no node would pass the check above.
    node_providers = sorted(
        {e["args"]["provider"] for e in events if e.get("cat") == "Node" and "provider" in e.get("args", {})}
    )
    if provider not in node_providers:
        fail(f"the session lists {provider} but its nodes ran on {node_providers}")
    return used, node_providers


def check_ldd(ort_dir: Path, provider: str) -> None:
    short = {"CUDAExecutionProvider": "cuda", "OpenVINOExecutionProvider": "openvino"}.get(provider)
    if short is None:
        return
    lib = ort_dir / "capi" / f"libonnxruntime_providers_{short}.so"
    if not lib.exists():
        fail(f"{lib} is missing")
    out = subprocess.run(["ldd", str(lib)], capture_output=True, text=True, check=False).stdout
    missing = [
        line.split()[0]
        for line in out.splitlines()
        if "not found" in line and not line.strip().startswith(DRIVER_LIBS)
    ]
    if missing:
        fail(f"{lib.name} links to libraries this image lacks: {', '.join(missing)} "
             f"(LD_LIBRARY_PATH={os.environ.get('LD_LIBRARY_PATH', '')})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True)
    parser.add_argument("--provider", required=True)
    parser.add_argument("--providers", help="comma-separated, exact")
    parser.add_argument("--onnxruntime-version")
    parser.add_argument("--session", action="store_true")
    parser.add_argument("--ldd", action="store_true")
    parser.add_argument("--write", type=Path)
    args = parser.parse_args(argv)

    import onnxruntime as ort

    ort_dir = Path(ort.__file__).parent
    package, package_version = ort_distribution()
    available = ort.get_available_providers()
    if args.onnxruntime_version and ort.__version__ != args.onnxruntime_version:
        fail(f"onnxruntime {ort.__version__} installed, the image promises {args.onnxruntime_version}")
    if args.provider not in available:
        fail(f"{args.provider} is not in get_available_providers() = {available}")
    if args.providers is not None and available != args.providers.split(","):
        fail(f"get_available_providers() = {available}, the image's label says {args.providers.split(',')}")
    if args.ldd:
        check_ldd(ort_dir, args.provider)
    session_providers, node_providers = check_session(args.provider) if args.session else (None, None)

    info = {
        "name": args.name,
        "execution_provider": args.provider,
        "onnxruntime_version": ort.__version__,
        "onnxruntime_package": package,
        "onnxruntime_package_version": package_version,
        "available_providers": available,
        "python_version": platform.python_version(),
        "telemetry_disabled": os.environ.get("ORT_DISABLE_TELEMETRY") == "1",
        "olive_systems_version": metadata.version("olive-systems"),
        "packages": {
            d.metadata["Name"]: d.version
            for d in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"].lower())
        },
    }
    openvino = bundled_openvino_version(ort_dir) if args.provider == "OpenVINOExecutionProvider" else None
    if openvino:
        info["openvino_version"] = openvino
    if session_providers is not None:
        info["session_providers"] = session_providers
        info["node_providers"] = node_providers
    if args.write:
        args.write.write_text(json.dumps(info, indent=2) + "\n")
        args.write.chmod(0o644)
    print(json.dumps({k: v for k, v in info.items() if k != "packages"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
