"""OnnxConversion: torch.onnx.export of a Hugging Face model, io config derived from its task."""

from __future__ import annotations

from pathlib import Path

from ..errors import PassError
from ..models import HF_TASKS, ModelRef, copy_side_files, folder_sha256, load_hf_model, model_input_names
from ..user_script import load_function
from .base import Pass, PassContext


def task_io_config(ref: ModelRef) -> dict:
    """Input/output names and dynamic axes for a standard HF task, so recipes need no io_config."""
    if ref.task not in HF_TASKS:
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
    description = "Export a PyTorch / Hugging Face model to ONNX with torch.onnx.export."
    input_types = ("HfModel",)
    depends_on = ("torch", "transformers", "onnx")
    accelerator_dependent = False
    config_schema = {
        "target_opset": {"type": "integer", "minimum": 9, "maximum": 23, "default": 17},
        "use_dynamo_exporter": {"type": "boolean", "default": False},
        "dummy_batch_size": {"type": "integer", "minimum": 1, "default": 1},
        "dummy_sequence_length": {"type": "integer", "minimum": 1, "default": 128},
    }

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        import torch

        hf_model = load_hf_model(model)
        io_config = self._io_config(model, hf_model)
        dummy, keywords = self._dummy_inputs(model, hf_model, io_config, config)
        wrapper = _KeywordForward(hf_model, keywords, io_config["output_names"])
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx_path = out_dir / "model.onnx"
        try:
            with torch.no_grad():
                torch.onnx.export(
                    wrapper,
                    dummy,
                    str(onnx_path),
                    input_names=io_config["input_names"],
                    output_names=io_config["output_names"],
                    dynamic_axes=io_config.get("dynamic_axes"),
                    opset_version=config["target_opset"],
                    do_constant_folding=True,
                    dynamo=config["use_dynamo_exporter"],
                )
        except Exception as exc:  # the exporter raises many types; the user needs the message
            raise PassError(f"torch.onnx.export failed: {str(exc).splitlines()[0]}", "check io_config / dummy inputs") from exc
        copy_side_files(Path(model.path), out_dir)
        return ModelRef(
            type="OnnxModel",
            path=str(out_dir),
            hash=folder_sha256(out_dir),
            task=model.task,
            io_config=io_config,
            attributes={"opset": config["target_opset"]},
        )

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


def _keyword_forward_class():
    import torch

    class KeywordForward(torch.nn.Module):
        """Calls the model with keyword arguments: positional calls break BertModel on transformers 5."""

        def __init__(self, model, keywords, output_names):
            super().__init__()
            self.model, self.keywords, self.output_names = model, keywords, list(output_names)

        def forward(self, *args):
            outputs = self.model(**dict(zip(self.keywords, args))) if self.keywords else self.model(*args)
            if isinstance(outputs, (tuple, list)):
                return tuple(outputs[: len(self.output_names)])
            return tuple(outputs[name] if name in outputs else outputs[index]
                         for index, name in enumerate(self.output_names))

    return KeywordForward


def _KeywordForward(model, keywords, output_names):
    return _keyword_forward_class()(model, keywords, output_names)
