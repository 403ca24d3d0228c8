"""olive-systems: optimize Hugging Face, PyTorch and ONNX models for ONNX Runtime from a recipe.

Imports are lazy so that `olive-systems --help` and a fully cached run stay fast.
"""

from __future__ import annotations

import os

# onnxruntime collects usage data on Linux unless told not to; olive-systems sends nothing.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"

_LAZY = {
    "run": ("olive_systems.api", "run"),
    "WorkflowOutput": ("olive_systems.output", "WorkflowOutput"),
    "DeviceOutput": ("olive_systems.output", "DeviceOutput"),
    "ModelOutput": ("olive_systems.output", "ModelOutput"),
    "OliveSystemsError": ("olive_systems.errors", "OliveSystemsError"),
    # the seed's workflow functions: each builds a recipe and runs it through the same engine
    "capture_onnx_graph": ("olive_systems.workflows", "capture_onnx_graph"),
    "quantize": ("olive_systems.workflows", "quantize"),
    "auto_opt": ("olive_systems.workflows", "auto_opt"),
    "generate_adapter": ("olive_systems.workflows", "generate_adapter"),
    "convert_adapters": ("olive_systems.workflows", "convert_adapters"),
    "extract_adapters": ("olive_systems.workflows", "extract_adapters"),
    "finetune": ("olive_systems.workflows", "finetune"),
    "tune_session_params": ("olive_systems.workflows", "tune_session_params"),
    "generate_cost_model": ("olive_systems.workflows", "generate_cost_model"),
}

__all__ = list(_LAZY)


def __dir__() -> list[str]:
    """The public API (loaded lazily, so not yet in the module's namespace) and the module's own names."""
    return sorted({*globals(), *_LAZY} - {"os", "annotations"})


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'olive_systems' has no attribute '{name}'")
