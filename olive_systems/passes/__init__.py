"""The pass registry: one name per pass type, each mapped to the module that implements it."""

from __future__ import annotations

import importlib

_REGISTRY = {
    "OnnxConversion": "conversion",
    "OrtTransformersOptimization": "transformers_optimization",
    "OnnxDynamicQuantization": "quantization",
    "OnnxStaticQuantization": "quantization",
    "OnnxFloatToFloat16": "float16",
    "OrtSessionParamsTuning": "session_tuning",
}


def pass_types() -> list[str]:
    return sorted(_REGISTRY)


def get_pass_class(name: str):
    module = importlib.import_module(f"{__name__}.{_REGISTRY[name]}")
    return getattr(module, name)
