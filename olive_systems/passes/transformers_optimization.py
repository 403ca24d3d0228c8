"""OrtTransformersOptimization: onnxruntime.transformers graph fusion, with fused-op counts reported."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PassError
from ..models import ModelRef, copy_side_files, folder_sha256, has_external_data, save_onnx
from .base import Pass, PassContext

# Fused operators a fully fused encoder shows; a partial fusion is reported, not hidden.
FUSED_OPS = ("Attention", "MultiHeadAttention", "SkipLayerNormalization", "EmbedLayerNormalization",
             "BiasGelu", "FastGelu", "Gelu", "LayerNormalization", "SkipSimplifiedLayerNormalization")


class OrtTransformersOptimization(Pass):
    description = "Fuse attention, layer norm and GELU subgraphs with onnxruntime.transformers.optimizer."
    config_schema = {
        "model_type": {"type": ["string", "null"], "default": None,
                       "description": "bert, gpt2, ...; null reads it from the model's config.json"},
        "num_heads": {"type": "integer", "minimum": 0, "default": 0, "description": "0: read from config.json"},
        "hidden_size": {"type": "integer", "minimum": 0, "default": 0, "description": "0: read from config.json"},
        "opt_level": {"enum": [0, 1, 2, 99], "default": 0},
        "use_gpu": {"type": "boolean", "default": False},
        "only_onnxruntime": {"type": "boolean", "default": False},
        "float16": {"type": "boolean", "default": False},
        "keep_io_types": {"type": "boolean", "default": True},
        "optimization_options": {"type": "object", "default": {}, "description": "FusionOptions attributes"},
        "require_attention_fusion": {"type": "boolean", "default": False,
                                     "description": "fail the pass when no Attention node was fused"},
    }

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        hf_config = _read_hf_config(Path(model.path))
        model_type = config["model_type"] or hf_config.get("model_type", "bert")
        options = FusionOptions(model_type)
        for key, value in config["optimization_options"].items():
            if not hasattr(options, key):
                raise PassError(f"unknown optimization option '{key}'", "see onnxruntime FusionOptions attributes")
            setattr(options, key, value)
        optimized = optimize_model(
            str(model.onnx_path),
            model_type=model_type,
            num_heads=config["num_heads"] or hf_config.get("num_attention_heads", 0),
            hidden_size=config["hidden_size"] or hf_config.get("hidden_size", 0),
            opt_level=config["opt_level"],
            optimization_options=options,
            use_gpu=config["use_gpu"],
            only_onnxruntime=config["only_onnxruntime"],
        )
        if config["float16"]:
            optimized.convert_float_to_float16(keep_io_types=config["keep_io_types"])
        counts = fused_op_counts(optimized.model)
        ctx.log("fused: " + (", ".join(f"{op} x{n}" for op, n in counts.items() if n) or "nothing") +
                f"; {len(optimized.model.graph.node)} nodes")
        if not counts.get("Attention") and not counts.get("MultiHeadAttention"):
            message = f"partial fusion: no Attention node fused ({model_type}, {len(optimized.model.graph.node)} nodes left)"
            if config["require_attention_fusion"]:
                raise PassError(message, "check num_heads/hidden_size or the exporter (transformers 4.57 fuses fully)")
            ctx.log("warning: " + message)
        node_count = len(optimized.model.graph.node)
        optimized.topological_sort()  # what save_model_to_file does before it saves
        _add_ms_opset(optimized.model)
        # external data when the input had it (or the model is too big for one file), as model.onnx.data
        save_onnx(optimized.model, out_dir, external_data=has_external_data(Path(model.path)))
        copy_side_files(Path(model.path), out_dir)
        return model.relocated(out_dir, hash=folder_sha256(out_dir),
                               attributes={**model.attributes, "fused_operators": counts, "node_count": node_count})


def fused_op_counts(onnx_model) -> dict:
    counts = {op: 0 for op in FUSED_OPS}
    for node in onnx_model.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
    return {op: n for op, n in counts.items() if n}


def _add_ms_opset(onnx_model) -> None:
    """Declare the com.microsoft domain the fused operators live in (as OnnxModel.save does)."""
    if any(node.domain == "com.microsoft" for node in onnx_model.graph.node) and \
            not any(opset.domain == "com.microsoft" for opset in onnx_model.opset_import):
        onnx_model.opset_import.add(domain="com.microsoft", version=1)


def _read_hf_config(folder: Path) -> dict:
    path = folder / "config.json"
    return json.loads(path.read_text()) if path.exists() else {}
