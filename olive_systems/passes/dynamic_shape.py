"""DynamicToFixedShape: give symbolic dimensions (or whole input shapes) fixed sizes.

Some execution providers (NPUs above all) compile only static shapes. The pass edits the graph's
declared shapes with onnxruntime.tools.onnx_model_utils and leaves the weights alone: an input with
external data keeps its data files (copied as they are, never re-serialized).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PassError
from ..models import ONNX_FILE, ModelRef, copy_file, copy_side_files, external_data_files, folder_sha256
from .base import Pass, PassContext


class DynamicToFixedShape(Pass):
    description = ("Fix symbolic dimensions (dim_param[i] -> dim_value[i]) and/or whole input shapes "
                   "(input_shapes), for execution providers that need static shapes.")
    accelerator_dependent = False  # a graph edit: the same model whatever the target
    depends_on = ("onnxruntime", "onnx")
    config_schema = {
        "dim_param": {"type": ["array", "null"], "items": {"type": "string", "minLength": 1}, "default": None,
                      "description": "symbolic dimension names to fix, e.g. [batch_size, sequence_length]"},
        "dim_value": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 1}, "default": None,
                      "description": "the size of each dim_param, in the same order"},
        "input_shapes": {"type": ["object", "null"], "default": None,
                         "additionalProperties": {"type": "array", "items": {"type": "integer", "minimum": 1}},
                         "description": "input name -> its complete fixed shape, e.g. {input_ids: [1, 128]}"},
    }

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        import onnx
        from onnxruntime.tools.onnx_model_utils import fix_output_shapes, make_dim_param_fixed, make_input_shape_fixed

        params, values = check_dim_config(config.get("dim_param"), config.get("dim_value"))
        shapes = config.get("input_shapes") or {}
        if not params and not shapes:
            raise PassError("DynamicToFixedShape has nothing to fix", "give dim_param with dim_value, or input_shapes")
        proto = onnx.load(str(model.onnx_path), load_external_data=False)  # shapes only: the weights stay where they are
        graph = proto.graph
        present = symbolic_dims(graph)
        missing = [name for name in params if name not in present]
        if missing:
            raise PassError(f"dim_param {missing} not in the model; its symbolic dimensions are: "
                            f"{', '.join(sorted(present)) or '(none: every shape is already fixed)'}",
                            "use names from that list")
        inputs = {value.name: value for value in graph.input}
        for name, shape in shapes.items():
            if name not in inputs:
                raise PassError(f"input_shapes: '{name}' is not an input of the model; its inputs are: "
                                f"{', '.join(inputs)}", "use one of those names")
            dims = inputs[name].type.tensor_type.shape.dim
            if len(dims) != len(shape):
                raise PassError(f"input_shapes: '{name}' has rank {len(dims)}, the shape given has {len(shape)} dims",
                                f"give {len(dims)} sizes for '{name}'")
            for index, (dim, size) in enumerate(zip(dims, shape)):
                if dim.HasField("dim_value") and dim.dim_value != size:
                    raise PassError(f"input_shapes: dim {index} of '{name}' is fixed at {dim.dim_value}, not {size}",
                                    f"give {dim.dim_value} there")
        for name, value in zip(params, values):
            make_dim_param_fixed(graph, name, value)
        for name, shape in shapes.items():
            make_input_shape_fixed(graph, name, list(shape))
        try:
            fix_output_shapes(proto)  # outputs whose shape follows from the now fixed inputs
        except Exception as exc:  # contrib operators defeat ONNX shape inference: outputs stay symbolic
            ctx.log(f"output shapes left as they were: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}")
        out_dir.mkdir(parents=True, exist_ok=True)
        onnx.save_model(proto, str(out_dir / ONNX_FILE))  # external tensors stay references to the same file names
        source = Path(model.path)
        for relative in external_data_files(source, [ONNX_FILE]):
            copy_file(source / relative, out_dir / relative)  # a copy: onnx refuses hard-linked data files
        copy_side_files(source, out_dir)
        fixed = {**dict(zip(params, values)), **{f"input:{name}": list(shape) for name, shape in shapes.items()}}
        ctx.log("fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
        return model.relocated(out_dir, hash=folder_sha256(out_dir), attributes={**model.attributes, "fixed_shapes": fixed})


def check_dim_config(dim_param, dim_value) -> tuple[list[str], list[int]]:
    """dim_param and dim_value as two lists of equal length (both may be empty)."""
    params, values = list(dim_param or []), list(dim_value or [])
    if len(params) != len(values):
        raise PassError(f"dim_param has {len(params)} names but dim_value has {len(values)} values",
                        "give one value per dim_param, in the same order")
    if len(set(params)) != len(params):
        raise PassError(f"dim_param names a dimension twice: {params}", "name each symbolic dimension once")
    return params, values


def symbolic_dims(graph) -> set[str]:
    """Every dim_param of the graph's inputs, outputs and intermediate value infos."""
    names = set()
    for value in [*graph.input, *graph.output, *graph.value_info]:
        if value.type.HasField("tensor_type"):
            names.update(dim.dim_param for dim in value.type.tensor_type.shape.dim if dim.HasField("dim_param"))
    return names
