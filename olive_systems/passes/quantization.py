"""Dynamic and static INT8 quantization with onnxruntime.quantization."""

from __future__ import annotations

import fnmatch
import tempfile
from pathlib import Path

from ..errors import PassError
from ..models import (EXTERNAL_DATA_THRESHOLD, ONNX_DATA_FILE, ONNX_FILE, ModelRef, copy_onnx_model, copy_side_files,
                      external_data_files, folder_sha256, has_external_data, load_onnx, save_onnx)
from .base import Pass, PassContext

_COMMON = {
    "weight_type": {"enum": ["QInt8", "QUInt8"], "default": "QInt8"},
    "per_channel": {"type": "boolean", "default": False},
    "reduce_range": {"type": "boolean", "default": False},
    "op_types_to_quantize": {"type": ["array", "null"], "items": {"type": "string"}, "default": None},
    "nodes_to_exclude": {"type": "array", "items": {"type": "string"}, "default": [],
                         "description": "node names or glob patterns kept in float"},
    "op_types_to_exclude": {"type": "array", "items": {"type": "string"}, "default": [],
                            "description": "operator types whose nodes stay in float"},
    "extra_options": {"type": "object", "default": {}},
}


class _Quantization(Pass):
    depends_on = ("onnxruntime", "onnx")

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        out_dir.mkdir(parents=True, exist_ok=True)
        external = has_external_data(Path(model.path))
        # The quantizer writes scratch files beside its input: give it a private copy, never the
        # (read-only, content-addressed) cache folder the input lives in. The external data travels
        # with it under the names model.onnx refers to, copied (onnx refuses hard-linked data files).
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as work:
            source_dir = Path(work) / "input"
            copy_onnx_model(Path(model.path), source_dir)
            self._quantize_file(model, source_dir / ONNX_FILE, config, out_dir, ctx, external)
        stray = [name for name in external_data_files(out_dir, [ONNX_FILE]) if name != ONNX_DATA_FILE]
        if stray:  # external data under other names: rewritten as the one model.onnx.data
            proto = load_onnx(out_dir)
            for name in stray:
                (out_dir / name).unlink()
            save_onnx(proto, out_dir, external_data=True)
        copy_side_files(Path(model.path), out_dir)
        return model.relocated(out_dir, hash=folder_sha256(out_dir),
                               attributes={**model.attributes, "quantization": type(self).__name__})

    def _quantize_file(self, model: ModelRef, source: Path, config: dict, out_dir: Path, ctx: PassContext,
                       external: bool) -> None:
        import onnx

        extra = dict(config["extra_options"])
        # A fused model's shape inference leaves some weights untyped ("Unable to find data type for
        # weight_name=..."); declaring float as the default tensor type lets the quantizer go on.
        extra.setdefault("DefaultTensorType", onnx.TensorProto.FLOAT)
        graph = onnx.load(str(source), load_external_data=False)
        kwargs = dict(
            model_input=str(source),
            model_output=str(out_dir / "model.onnx"),
            per_channel=config["per_channel"],
            reduce_range=config["reduce_range"],
            weight_type=_quant_type(config["weight_type"]),
            op_types_to_quantize=config["op_types_to_quantize"],
            nodes_to_exclude=_excluded_nodes(graph, config),
            extra_options=extra,
            # writes model.onnx.data beside the output (onnxruntime names it after the model file)
            use_external_data_format=external or source.stat().st_size > EXTERNAL_DATA_THRESHOLD,
        )
        try:
            self.quantize(model, config, kwargs, ctx)
        except PassError:
            raise
        except Exception as exc:
            text = " ".join(str(exc).split())[:400] or type(exc).__name__  # ONNX Runtime's detail is on its 2nd line
            raise PassError(f"{type(self).__name__} failed: {text}", _quantization_fix(str(exc), graph, config)) from exc

    def quantize(self, model: ModelRef, config: dict, kwargs: dict, ctx: PassContext) -> None:
        raise NotImplementedError


def _quantization_fix(text: str, graph, config: dict) -> str | None:
    """A hint only where the error tells what is wrong; none is better than a wrong one."""
    if "invalid dimensions" in text or "Invalid rank" in text:  # the calibration batches do not fit the model
        data = config.get("data_config")
        return (f"make data config '{data}' give the input shapes the model takes (max_length, padding: max_length), "
                "or leave the model's shapes dynamic") if data else None
    if any(node.name and node.name in text for node in graph.graph.node):  # it names the node it failed on
        return "keep the failing nodes in float with nodes_to_exclude / op_types_to_exclude"
    return None


class OnnxDynamicQuantization(_Quantization):
    description = "INT8 weights, activations quantized at run time (no calibration data needed)."
    config_schema = dict(_COMMON)

    def quantize(self, model, config, kwargs, ctx):
        from onnxruntime.quantization import quantize_dynamic

        quantize_dynamic(**kwargs)


class OnnxStaticQuantization(_Quantization):
    description = "INT8 weights and activations with ranges calibrated on a data config."
    required_config = ("data_config",)
    config_schema = {
        **_COMMON,
        "data_config": {"type": "string", "description": "name of a data_configs entry for calibration"},
        "max_calibration_samples": {"type": ["integer", "null"], "minimum": 1, "default": None},
        "quant_format": {"enum": ["QDQ", "QOperator"], "default": "QDQ"},
        "activation_type": {"enum": ["QInt8", "QUInt8"], "default": "QUInt8"},
        "calibrate_method": {"enum": ["MinMax", "Entropy", "Percentile", "Distribution"], "default": "MinMax"},
        "symbolic_shape_inference": {"type": "boolean", "default": True,
                                     "description": "type every activation first; without it a fused graph's "
                                                    "activations are silently left unquantized"},
    }

    def quantize(self, model, config, kwargs, ctx):
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        if config["symbolic_shape_inference"]:
            source = Path(kwargs["model_input"])
            inferred = SymbolicShapeInference.infer_shapes(onnx.load(str(source)), auto_merge=True)
            # a new folder: the private model.onnx may be a hard link to the cached input, and the
            # inferred model's external data must not overwrite the input's
            save_onnx(inferred, source.parent.with_name("inferred"), external_data=kwargs["use_external_data_format"])
            kwargs["model_input"] = str(source.parent.with_name("inferred") / ONNX_FILE)

        batches = ctx.load_data(config["data_config"], model)
        limit = config["max_calibration_samples"]
        inputs = batches.inputs[:limit] if limit else batches.inputs
        quantize_static(
            calibration_data_reader=_Reader(inputs),
            quant_format=getattr(QuantFormat, config["quant_format"]),
            activation_type=_quant_type(config["activation_type"]),
            calibrate_method=getattr(CalibrationMethod, config["calibrate_method"]),
            **kwargs,
        )


class _Reader:
    """CalibrationDataReader over pre-processed batches (duck-typed: get_next and rewind)."""

    def __init__(self, inputs: list[dict]):
        self.inputs, self.index = inputs, 0

    def get_next(self):
        if self.index >= len(self.inputs):
            return None
        self.index += 1
        return self.inputs[self.index - 1]

    def rewind(self):
        self.index = 0


def _quant_type(name: str):
    from onnxruntime.quantization import QuantType

    return getattr(QuantType, name)


def _excluded_nodes(onnx_model, config: dict) -> list[str]:
    patterns, op_types = config["nodes_to_exclude"], set(config["op_types_to_exclude"])
    return [
        node.name
        for node in onnx_model.graph.node
        if node.op_type in op_types or any(fnmatch.fnmatchcase(node.name, pattern) for pattern in patterns)
    ]
