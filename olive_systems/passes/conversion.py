"""OnnxConversion: torch.onnx.export of a Hugging Face model (io config derived from its task) or of a
PyTorchModel's module (io config and example inputs from its script: pytorch_model.py)."""

from __future__ import annotations

from pathlib import Path

from ..errors import PassError
from ..models import (HF_TASKS, ModelRef, canonical_task, copy_side_files, folder_sha256, is_generative, load_hf_model,
                      model_input_names)
from ..user_script import load_function
from .base import Pass, PassContext


def task_io_config(ref: ModelRef) -> dict:
    """Input/output names and dynamic axes for a standard HF task, so recipes need no io_config."""
    if canonical_task(ref.task) not in HF_TASKS:
        raise PassError(
            f"no built-in io_config for task '{ref.task}'",
            f"use one of {sorted(HF_TASKS)} or give io_config in input_model",
        )
    inputs = model_input_names(Path(ref.path))
    outputs = HF_TASKS[ref.task][1]
    return {
        "input_names": inputs,
        "output_names": list(outputs),
        "dynamic_axes": {**{name: {0: "batch_size", 1: "sequence_length"} for name in inputs}, **outputs},
    }


class OnnxConversion(Pass):
    description = "Export a PyTorch / Hugging Face model to ONNX (TorchScript or dynamo exporter); decoders with their KV cache."
    input_types = ("HfModel", "PyTorchModel")
    depends_on = ("torch", "transformers", "onnx", "onnxscript")
    accelerator_dependent = False
    config_schema = {
        "target_opset": {"type": "integer", "minimum": 9, "maximum": 23, "default": 17},
        "use_dynamo_exporter": {"type": "boolean", "default": False},
        "dummy_batch_size": {"type": "integer", "minimum": 1, "default": 1},
        "dummy_sequence_length": {"type": "integer", "minimum": 1, "default": 128},
        "torch_dtype": {"enum": [None, "float32", "float16", "bfloat16"], "default": None,
                        "description": "cast the model to this dtype before the export"},
        "past_key_value_name": {"type": ["string", "null"], "default": None,
                                "description": "prefix of a decoder's KV-cache input names (default past_key_values)"},
        "fixed_param_dict": {"type": ["object", "null"], "additionalProperties": {"type": "integer", "minimum": 1},
                             "default": None, "description": "dynamic dimension name -> fixed size, e.g. {batch_size: 1}"},
    }

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        import torch

        dtype = getattr(torch, config["torch_dtype"]) if config["torch_dtype"] else None
        if model.type == "PyTorchModel":
            module, dummy, io_config = self._script_module(model, dtype)
            spec = None
        elif is_generative(model.task):
            hf_model = load_hf_model(model, **({"torch_dtype": dtype} if dtype else {}))
            module, dummy, io_config, spec = self._decoder(model, hf_model, config, dtype)
        else:
            hf_model = load_hf_model(model, **({"torch_dtype": dtype} if dtype else {}))
            io_config = self._io_config(model, hf_model)
            dummy, keywords = self._dummy_inputs(model, hf_model, io_config, config)
            module, spec = _KeywordForward(hf_model, keywords, io_config["output_names"]), None
        if io_config.get("dynamic_axes"):  # axes come back from a job's JSON as strings; torch wants ints
            from ..pytorch_model import int_axes

            io_config = {**io_config, "dynamic_axes": int_axes(io_config["dynamic_axes"])}
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = out_dir / "model.onnx"
        export_onnx(module, dummy, io_config, onnx_path, config)
        if config["fixed_param_dict"]:
            fix_dimensions(out_dir, config["fixed_param_dict"])
        adapter = model.attributes.get("adapter_path")
        if adapter:  # the exporter names LoRA weights onnx::MatMul_N: give them peft's names back
            from ..llm.adapters import name_lora_weights

            name_lora_weights(onnx_path, Path(model.path) / adapter)
        if model.type != "PyTorchModel":  # its folder holds the script and weights, nothing to carry over
            copy_side_files(Path(model.path), out_dir)
        attributes = {"opset": config["target_opset"]}
        if spec is not None:
            from ..llm.genai_folder import write_genai_config

            write_genai_config(out_dir, spec, io_config, Path(model.path))
            attributes["decoder"] = {"with_past": canonical_task(model.task) == "text-generation-with-past"}
        return ModelRef(type="OnnxModel", path=str(out_dir), hash=folder_sha256(out_dir), task=model.task,
                        io_config=io_config, attributes=attributes)

    @staticmethod
    def _script_module(model: ModelRef, dtype):
        """A PyTorchModel's module wrapped for export, its example inputs and io_config."""
        import torch

        from ..pytorch_model import PyTorchModelHandle

        handle = PyTorchModelHandle(model)
        dummy, keywords = handle.dummy_inputs()
        module, dummy = to_dtype(handle.model, dummy, dtype)
        io_config = handle.export_config()
        if isinstance(module, torch.jit.ScriptModule) and keywords is None:  # exported as it is: it cannot be wrapped
            return module, dummy, io_config
        return _KeywordForward(module, keywords, io_config["output_names"]), dummy, io_config

    @staticmethod
    def _decoder(model: ModelRef, hf_model, config: dict, dtype):
        from ..llm.export import accepts_position_ids, decoder_module, dummy_inputs
        from ..llm.spec import PAST_PREFIX, DecoderSpec

        spec = DecoderSpec.from_config(hf_model.config)
        with_past = canonical_task(model.task) == "text-generation-with-past"
        position_ids = accepts_position_ids(hf_model)
        io_config = spec.io_config(with_past, position_ids, config["past_key_value_name"] or PAST_PREFIX)
        module = decoder_module(hf_model, spec, with_past, position_ids)
        return module, dummy_inputs(spec, with_past, position_ids, dtype=dtype), io_config, spec

    @staticmethod
    def _io_config(model: ModelRef, hf_model) -> dict:
        if isinstance(model.io_config, dict):
            return model.io_config
        if isinstance(model.io_config, str):
            return load_function(model.model_script, model.io_config, "input_model.io_config")(hf_model)
        return task_io_config(model)

    @staticmethod
    def _dummy_inputs(model: ModelRef, hf_model, io_config: dict, config: dict) -> tuple[tuple, list | None]:
        """The export's example inputs, and the forward() keywords they go to (None: positional)."""
        import torch

        if model.dummy_inputs_func:
            dummy = load_function(model.model_script, model.dummy_inputs_func, "input_model.dummy_inputs_func")(hf_model)
            if isinstance(dummy, dict):  # keys are forward() keywords; io_config names the ONNX inputs
                return tuple(dummy.values()), list(dummy)
            return (tuple(dummy) if isinstance(dummy, (list, tuple)) else (dummy,)), None
        shape = (config["dummy_batch_size"], config["dummy_sequence_length"])
        vocab = getattr(hf_model.config, "vocab_size", 100)
        generator = torch.Generator().manual_seed(0)
        dummy = []
        for name in io_config["input_names"]:
            if name == "input_ids":
                dummy.append(torch.randint(0, vocab, shape, generator=generator))
            elif name == "attention_mask":
                dummy.append(torch.ones(shape, dtype=torch.int64))
            else:
                dummy.append(torch.zeros(shape, dtype=torch.int64))
        return tuple(dummy), io_config["input_names"]


def to_dtype(module, dummy: tuple, dtype):
    """The module and its float example inputs in the export's dtype (None: as they are)."""
    import torch

    if dtype is None:
        return module, dummy
    return module.to(dtype), tuple(d.to(dtype) if torch.is_floating_point(d) else d for d in dummy)


def export_onnx(module, dummy: tuple, io_config: dict, onnx_path: Path, config: dict, what: str = "",
                fix: str = "check io_config / dummy inputs") -> None:
    """torch.onnx.export (or the dynamo exporter) with OnnxConversion's config; its failure as a PassError
    (what: the message's prefix, naming the part that failed)."""
    import torch

    try:
        with torch.no_grad():
            if config["use_dynamo_exporter"]:
                # it emits opset 18 and up; converting down fails on Reduce* axes inputs
                _dynamo_export(module, dummy, io_config, onnx_path, max(config["target_opset"], 18))
            else:
                torch.onnx.export(module, dummy, str(onnx_path), input_names=io_config["input_names"],
                                  output_names=io_config["output_names"], dynamic_axes=io_config.get("dynamic_axes"),
                                  opset_version=config["target_opset"], do_constant_folding=True, dynamo=False)
    except Exception as exc:  # the exporter raises many types; the user needs the message, not a graph dump
        raise PassError(f"{what}torch.onnx.export failed: {_first_line(exc)}", fix) from exc


def _keyword_forward_class():
    import torch

    class KeywordForward(torch.nn.Module):
        """Calls the model with keyword arguments: positional calls break BertModel on transformers 5."""

        def __init__(self, model, keywords, output_names):
            super().__init__()
            self.model, self.keywords, self.output_names = model, keywords, list(output_names)

        def forward(self, *args):
            outputs = self.model(**dict(zip(self.keywords, args))) if self.keywords else self.model(*args)
            if isinstance(outputs, torch.Tensor):  # a plain module's single output
                return (outputs,)
            if isinstance(outputs, (tuple, list)):
                return tuple(outputs[: len(self.output_names)])
            return tuple(outputs[name] if name in outputs else outputs[index]
                         for index, name in enumerate(self.output_names))

    return KeywordForward


def _KeywordForward(model, keywords, output_names):
    return _keyword_forward_class()(model, keywords, output_names).eval()


def _first_line(exc: BaseException) -> str:
    """The root cause's first line: the dynamo exporter wraps the real error in a generic one."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _dynamo_export(module, dummy: tuple, io_config: dict, onnx_path: Path, opset: int) -> None:
    """The dynamo exporter takes dynamic_shapes, not dynamic_axes: every named axis becomes
    Dim.AUTO (torch.export infers how axes relate, e.g. total = past + sequence), and the ONNX
    dimensions get the io_config's names back afterwards."""
    import torch

    import inspect

    axes = io_config.get("dynamic_axes") or {}
    per_input = [{int(axis): torch.export.Dim.AUTO for axis in axes.get(name, {})} or None
                 for name in io_config["input_names"]]
    # dynamic_shapes follows forward()'s structure: named arguments, then *args as one tuple
    parameters = inspect.signature(module.forward).parameters.values()
    named = sum(p.kind == p.POSITIONAL_OR_KEYWORD for p in parameters)
    shapes = tuple(per_input[:named])
    if any(p.kind == p.VAR_POSITIONAL for p in parameters):
        shapes += (tuple(per_input[named:]),)
    program = torch.onnx.export(module, dummy, dynamo=True, dynamic_shapes=shapes, opset_version=opset,
                                input_names=io_config["input_names"], output_names=io_config["output_names"],
                                external_data=True, optimize=True)
    program.save(str(onnx_path), external_data=True)
    name_dimensions(onnx_path, axes)


def name_dimensions(onnx_path: Path, axes: dict) -> None:
    """Give graph inputs and outputs the dynamic dimension names of the io_config."""
    import onnx

    proto = onnx.load(str(onnx_path), load_external_data=False)
    for value in list(proto.graph.input) + list(proto.graph.output):
        for axis, name in (axes.get(value.name) or {}).items():
            dims = value.type.tensor_type.shape.dim
            if int(axis) < len(dims) and not dims[int(axis)].HasField("dim_value"):
                dims[int(axis)].dim_param = name
    onnx.save(proto, str(onnx_path))


def fix_dimensions(folder: Path, fixed: dict) -> None:
    """Dynamic dimensions -> fixed sizes (NPUs and some EPs need static shapes)."""
    import onnx
    from onnxruntime.tools.onnx_model_utils import make_dim_param_fixed

    path = folder / "model.onnx"
    proto = onnx.load(str(path), load_external_data=False)
    present = {d.dim_param for v in list(proto.graph.input) + list(proto.graph.output)
               for d in v.type.tensor_type.shape.dim if d.dim_param}
    unknown = sorted(set(fixed) - present)
    if unknown:
        raise PassError(f"fixed_param_dict names {unknown}, which the model does not have",
                        f"use some of {sorted(present)}")
    for name, value in fixed.items():
        make_dim_param_fixed(proto.graph, name, int(value))
    onnx.save(proto, str(path))
