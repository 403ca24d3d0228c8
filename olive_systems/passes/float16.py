"""OnnxFloatToFloat16: convert float32 weights and compute to float16 (GPU EPs benefit)."""

from __future__ import annotations

from pathlib import Path

from ..models import ModelRef, copy_side_files, folder_sha256, has_external_data, load_onnx, save_onnx
from .base import Pass, PassContext


class OnnxFloatToFloat16(Pass):
    description = "Convert a float32 ONNX model to float16, optionally keeping float32 inputs/outputs."
    config_schema = {
        "keep_io_types": {"type": "boolean", "default": True},
        "op_block_list": {"type": ["array", "null"], "items": {"type": "string"}, "default": None,
                          "description": "operator types left in float32"},
        "node_block_list": {"type": ["array", "null"], "items": {"type": "string"}, "default": None},
    }

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        folder = Path(model.path)
        external = has_external_data(folder)
        if external:
            # Shape inference on the graph alone (a model with its weights may be over protobuf's 2 GB),
            # then the weights read in.
            proto = onnx.shape_inference.infer_shapes(load_onnx(folder, load_external_data=False))
            onnx.load_external_data_for_model(proto, str(folder))
        else:
            proto = load_onnx(folder)
        converted = convert_float_to_float16(
            proto,
            keep_io_types=config["keep_io_types"],
            op_block_list=config["op_block_list"],
            node_block_list=config["node_block_list"],
            disable_shape_infer=external,
        )
        save_onnx(converted, out_dir, external_data=external)
        copy_side_files(Path(model.path), out_dir)
        return model.relocated(out_dir, hash=folder_sha256(out_dir), attributes={**model.attributes, "precision": "fp16"})
