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


# config.json model_type -> the onnxruntime.transformers optimizer's model type whose fusions fit it.
# Encoders of BERT's shape take the bert fusions (tested to fuse fully: distilbert, roberta; a
# family whose attention differs, such as DeBERTa's, fuses partly, which the pass reports).
OPTIMIZER_MODEL_TYPES = {
    **{family: "bert" for family in ("bert", "distilbert", "roberta", "xlm-roberta", "camembert", "albert", "electra",
                                     "deberta", "deberta-v2", "mpnet", "ernie", "data2vec-text")},
    **{family: "bart" for family in ("bart", "mbart", "marian", "whisper")},
    **{family: "gpt2" for family in ("gpt2", "gptj", "gpt-j", "opt", "codegen")},
    "gpt_neox": "gpt_neox", "t5": "t5", "mt5": "t5", "vit": "vit", "deit": "vit", "swin": "swin", "clip": "clip",
    "phi": "phi", "qwen3": "qwen3", "sam2": "sam2",
}


def optimizer_model_type(configured: str | None, hf_config: dict) -> str:
    """The optimizer's model type: the pass's model_type, else config.json's model_type mapped to
    the optimizer family that fuses it. One error naming the fix when neither gives one."""
    from onnxruntime.transformers.optimizer import MODEL_TYPES

    if configured:
        if configured not in MODEL_TYPES:
            raise PassError(f"model_type '{configured}' is not a model type of the onnxruntime.transformers optimizer",
                            f"use one of {sorted(MODEL_TYPES)}, or leave model_type out to read it from config.json")
        return configured
    family = hf_config.get("model_type")
    if not family:
        raise PassError("the model folder has no config.json with a model_type, so the fusions to apply are unknown",
                        f"set the pass's model_type to one of {sorted(MODEL_TYPES)}")
    if family in MODEL_TYPES:
        return family
    if family not in OPTIMIZER_MODEL_TYPES:
        raise PassError(f"config.json model_type '{family}' is not a family the onnxruntime.transformers optimizer fuses",
                        f"set the pass's model_type to the optimizer type of the same architecture "
                        f"(one of {sorted(MODEL_TYPES)}; bert for BERT-like encoders)")
    return OPTIMIZER_MODEL_TYPES[family]


def _head_count(hf_config: dict) -> int:
    """Attention heads under the name each family's config.json uses (0: let the optimizer detect)."""
    return int(next((hf_config[k] for k in ("num_attention_heads", "n_heads", "n_head", "encoder_attention_heads")
                     if hf_config.get(k)), 0))


def _hidden_size(hf_config: dict) -> int:
    return int(next((hf_config[k] for k in ("hidden_size", "dim", "n_embd", "d_model") if hf_config.get(k)), 0))


def _unfused_fix(config: dict, hf_config: dict) -> str:
    """Blame num_heads / hidden_size only where the pass set them against config.json."""
    wrong = [f"{key} {config[key]} (config.json: {actual})" for key, actual in
             (("num_heads", _head_count(hf_config)), ("hidden_size", _hidden_size(hf_config)))
             if config[key] and actual and config[key] != actual]
    if wrong:
        return f"the pass sets {', '.join(wrong)}: leave them at 0 to read config.json"
    return ("the optimizer did not recognise this export's attention subgraph; set require_attention_fusion: false "
            "to keep the partly fused model")


class OrtTransformersOptimization(Pass):
    description = "Fuse attention, layer norm and GELU subgraphs with onnxruntime.transformers.optimizer."
    config_schema = {
        "model_type": {"type": ["string", "null"], "default": None,
                       "description": "the optimizer's bert, gpt2, bart, t5, ...; null maps config.json's model_type "
                                      "to it (distilbert, roberta, xlm-roberta, ... fuse as bert)"},
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
        model_type = optimizer_model_type(config["model_type"], hf_config)
        options = FusionOptions(model_type)
        for key, value in config["optimization_options"].items():
            if not hasattr(options, key):
                raise PassError(f"unknown optimization option '{key}'", "see onnxruntime FusionOptions attributes")
            setattr(options, key, value)
        optimized = optimize_model(
            str(model.onnx_path),
            model_type=model_type,
            num_heads=config["num_heads"] or _head_count(hf_config),
            hidden_size=config["hidden_size"] or _hidden_size(hf_config),
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
                raise PassError(message, _unfused_fix(config, hf_config))
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
