"""The Pass interface: a config schema (JSON Schema, published in the recipe schema) and run()."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..models import ModelRef


@dataclass
class Accelerator:
    device: str
    execution_provider: str

    @property
    def short(self) -> str:
        """cpu-cpu, gpu-cuda, cpu-openvino: the form used in ids and package names."""
        return f"{self.device.lower()}-{self.execution_provider.replace('ExecutionProvider', '').lower()}"

    def to_dict(self) -> dict:
        return {"device": self.device, "execution_provider": self.execution_provider}


@dataclass
class PassContext:
    """What a running pass may use beyond its model and config."""

    accelerator: Accelerator
    load_data: Callable[[str, ModelRef], Any]  # data config name -> Batches for that model
    log: Callable[[str], None]


class Pass:
    """Subclasses set the class attributes and implement run(); run imports heavy libraries lazily."""

    config_schema: ClassVar[dict] = {}  # JSON Schema "properties" of the config, with defaults
    required_config: ClassVar[tuple] = ()
    input_types: ClassVar[tuple] = ("OnnxModel",)
    # Packages whose versions enter the cache key: a new onnxruntime means a new result.
    depends_on: ClassVar[tuple] = ("onnxruntime", "onnx")
    # Conversion gives the same model whatever the target EP; quantization and tuning may not.
    accelerator_dependent: ClassVar[bool] = True
    # A pass that times the model (session tuning) must have the machine to itself while it runs.
    measures_timing: ClassVar[bool] = False
    description: ClassVar[str] = ""
    # Config keys that name data_configs entries: the engine ships their batches with the job and
    # puts their content in the cache key.
    data_config_keys: ClassVar[tuple] = ("data_config",)

    @classmethod
    def data_configs_used(cls, config: dict) -> list[str]:
        return [config[key] for key in cls.data_config_keys if config.get(key)]

    @classmethod
    def full_schema(cls) -> dict:
        return {
            "type": "object",
            "description": cls.description,
            "properties": cls.config_schema,
            "required": list(cls.required_config),
            "additionalProperties": False,
        }

    @classmethod
    def resolve_config(cls, config: dict | None) -> dict:
        """The recipe's config with every default filled in: what the cache key is made from."""
        resolved = {name: prop["default"] for name, prop in cls.config_schema.items() if "default" in prop}
        resolved.update(config or {})
        return resolved

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        raise NotImplementedError
