"""The pass registry: one name per pass type, each mapped to the module that implements it.

An alias is another name (Olive's) for a registered pass with some settings preset: its own class,
a subclass whose schema fixes those settings to their preset values (and defaults them)."""

from __future__ import annotations

import functools
import importlib

_REGISTRY = {
    "OnnxConversion": "conversion",
    "OrtTransformersOptimization": "transformers_optimization",
    "OnnxDynamicQuantization": "quantization",
    "OnnxStaticQuantization": "quantization",
    "OnnxFloatToFloat16": "float16",
    "OrtSessionParamsTuning": "session_tuning",
    "ModelBuilder": "model_builder",
    "DynamicToFixedShape": "dynamic_shape",
    "OnnxWeightOnlyQuantization": "weight_only",
    "ExtractAdapters": "adapters",
    "LoRA": "lora",
    "QLoRA": "lora",
    "SplitModel": "split",
}

# alias -> (registered pass, preset settings)
_ALIASES = {
    "OnnxBlockWiseRtnQuantization": ("OnnxWeightOnlyQuantization", {"algorithm": "rtn"}),
    "OnnxHqqQuantization": ("OnnxWeightOnlyQuantization", {"algorithm": "hqq"}),
    "OnnxGptqQuantization": ("OnnxWeightOnlyQuantization", {"algorithm": "gptq"}),
    "OnnxMatMul4Quantizer": ("OnnxWeightOnlyQuantization", {"bits": 4}),
}


def pass_types() -> list[str]:
    return sorted([*_REGISTRY, *_ALIASES])


def get_pass_class(name: str):
    if name in _ALIASES:
        return _alias_class(name)
    module = importlib.import_module(f"{__name__}.{_REGISTRY[name]}")
    return getattr(module, name)


@functools.cache
def _alias_class(name: str):
    target, preset = _ALIASES[name]
    base = get_pass_class(target)
    schema = dict(base.config_schema)
    for key, value in preset.items():
        schema[key] = {**schema[key], "enum": [value], "default": value}
    settings = ", ".join(f"{key} {value}" for key, value in preset.items())
    return type(name, (base,), {"config_schema": schema, "__module__": base.__module__,
                                "description": f"{base.description} Olive's name for {target} with {settings}."})
