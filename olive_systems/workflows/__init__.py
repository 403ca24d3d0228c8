"""The seed's workflow functions: capture_onnx_graph, quantize, auto_opt, finetune, generate_adapter and tune_session_params.

Each builds a recipe dict from its arguments (refusing, before any work, what olive-systems cannot
honour) and runs it through the one engine, olive_systems.api.run. The command line has one
subcommand per function, generated from its signature (workflows/arguments.py).
"""

from __future__ import annotations

import inspect
from typing import Callable

from .adapters import convert_adapters, extract_adapters, generate_adapter
from .auto import auto_opt
from .capture import capture_onnx_graph
from .cost_model import generate_cost_model
from .finetune import finetune
from .quantization import quantize
from .session_tuning import tune_session_params

WORKFLOWS: dict[str, Callable] = {
    "capture_onnx_graph": capture_onnx_graph,
    "quantize": quantize,
    "auto_opt": auto_opt,
    "finetune": finetune,
    "generate_adapter": generate_adapter,
    "tune_session_params": tune_session_params,
}
# Utility functions: they write files directly (no recipe, no WorkflowOutput) and return the path written.
UTILITIES: dict[str, Callable] = {
    "convert_adapters": convert_adapters,
    "extract_adapters": extract_adapters,
    "generate_cost_model": generate_cost_model,
}

__all__ = [*WORKFLOWS, *UTILITIES, "WORKFLOWS", "UTILITIES", "build_recipe"]


def build_recipe(command: str, **arguments) -> dict:
    """The recipe `command` (a WORKFLOWS name) would run for these arguments, without running it;
    raises the same RecipeError the call would."""
    import importlib

    func = WORKFLOWS[command]
    bound = inspect.signature(func).bind(**arguments)
    bound.apply_defaults()
    return importlib.import_module(func.__module__).build(dict(bound.arguments))
