"""ExtractAdapters: the LoRA weights of an ONNX model become inputs, so one base serves many adapters.

The input is an export of a base with its peft LoRA applied unmerged (OnnxConversion of an HfModel
with adapter_path): each adapted Linear is ``x @ W + ((x @ A) @ B) * scaling``, A and B initializers
named after peft's parameters (llm.adapters.name_lora_weights). The pass

* turns every A and B into a graph input of the same name, the scaling folded into B (so adapters of
  any alpha run on one graph); the rank dimension is symbolic (``lora_rank``) unless fixed;
* gives each input a default that adds nothing (rank 0, or zeros at a fixed rank), so the graph runs
  as the base model when no adapter is given and as any adapter when its weights are fed, by name or
  by an adapter file (onnxruntime: RunOptions.add_active_adapter(LoraAdapter); onnxruntime-genai:
  og.Adapters + generator.set_active_adapter);
* writes the exported adapter's weights beside the model as adapter_weights.<ext> in the layout of
  llm/adapters.py (any format; onnx_adapter is the one the runtimes load), in the dtype asked for
  (a Cast in the graph when it differs from the model's), or int4: the LoRA MatMuls become
  MatMulNBits whose weight, scales and zero points are inputs (a fixed rank, block size and mode);
* records attributes["adapters"] and keeps genai_config.json (its sessions told not to warn about
  the overridable initializers).

DoRA and LoHa are refused before any work (see llm.adapters.TYPE_REFUSALS).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import PassError
from ..llm.adapters import (ADAPTER_DTYPES, ADAPTER_FORMATS, INT4_BLOCK_SIZES, INT4_MODES, LORA_KEY, QUANT, SCALES,
                            TYPE_REFUSALS, ZERO_POINTS, _attr, cast, lora_name, quantize_int4, save_adapter_weights,
                            weights_file_name)
from ..models import ModelRef, copy_side_files, folder_sha256, has_external_data, load_onnx, save_onnx
from .base import Pass, PassContext

RANK_DIM = "lora_rank"
DYNAMIC_INT4_REFUSAL = ("dynamic_lora_r with quantize_int4: MatMulNBits fixes each LoRA MatMul's K and N, "
                        "so int4 adapter weights have the rank they were extracted with; drop dynamic_lora_r")


def _refusing(values: list, why: str) -> dict:
    return {"not": {"enum": values, "description": why}}


class ExtractAdapters(Pass):
    description = ("Make the LoRA weights of an exported model graph inputs (scaling folded in, rank dynamic or "
                   "fixed, optional int4 MatMulNBits) with defaults that run the base, and write the exported "
                   "adapter beside it (onnx_adapter for onnxruntime / onnxruntime-genai adapters, pt, numpy, safetensors).")
    input_types = ("OnnxModel",)
    accelerator_dependent = False
    config_schema = {
        "adapter_type": {"enum": ["lora", "dora", "loha"], "default": "lora",
                         "description": "lora; dora and loha are refused (see their messages)",
                         "allOf": [_refusing(["dora"], TYPE_REFUSALS["dora"]), _refusing(["loha"], TYPE_REFUSALS["loha"])]},
        "adapter_format": {"enum": list(ADAPTER_FORMATS), "default": "onnx_adapter",
                           "description": "format of adapter_weights.<ext>; onnx_adapter is what onnxruntime and "
                                          "onnxruntime-genai load"},
        "dtype": {"enum": [None, *ADAPTER_DTYPES], "default": None,
                  "description": "dtype of the adapter inputs and file (int4: of the scales); null: the model's"},
        "dynamic_lora_r": {"type": ["boolean", "null"], "default": None,
                           "description": "symbolic rank (any adapter rank at run time, base = rank 0); "
                                          "null: dynamic for float weights, fixed for int4"},
        "quantize_int4": {"type": "boolean", "default": False,
                          "description": "int4 block-wise adapter weights served by MatMulNBits"},
        "int4_block_size": {"enum": list(INT4_BLOCK_SIZES), "default": 32,
                            "description": "weights per block along K: a power of two in 16..256"},
        "int4_quantization_mode": {"enum": list(INT4_MODES), "default": "symmetric",
                                   "description": "symmetric: zero point 8; asymmetric: a 4-bit zero point per block"},
    }

    @classmethod
    def full_schema(cls) -> dict:
        return {**super().full_schema(),
                "allOf": [{"if": {"properties": {"quantize_int4": {"const": True}, "dynamic_lora_r": {"const": True}},
                                  "required": ["quantize_int4", "dynamic_lora_r"]},
                           "then": {"properties": {"dynamic_lora_r": {"not": {"const": True,
                                                                               "description": DYNAMIC_INT4_REFUSAL}}}}}]}

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        if config["adapter_type"] in TYPE_REFUSALS:
            raise PassError(f"adapter_type {config['adapter_type']}: {TYPE_REFUSALS[config['adapter_type']]}")
        int4 = bool(config["quantize_int4"])
        if int4 and config["dynamic_lora_r"]:
            raise PassError(DYNAMIC_INT4_REFUSAL)
        dynamic = (not int4) if config["dynamic_lora_r"] is None else bool(config["dynamic_lora_r"])
        source = Path(model.path)
        proto = load_onnx(source)
        extraction = extract_lora_inputs(proto, dtype=config["dtype"], dynamic_rank=dynamic,
                                         int4={"block_size": config["int4_block_size"],
                                               "mode": config["int4_quantization_mode"]} if int4 else None)
        out_dir.mkdir(parents=True, exist_ok=True)
        copy_side_files(source, out_dir)
        save_onnx(proto, out_dir, external_data=has_external_data(source))
        weights = out_dir / weights_file_name(config["adapter_format"])
        save_adapter_weights(extraction["tensors"], weights, config["adapter_format"])
        quiet_genai_sessions(out_dir)
        ranks = sorted(set(extraction["ranks"].values()))
        ctx.log(f"{len(extraction['ranks'])} LoRA modules (rank {', '.join(map(str, ranks))}) -> "
                f"{len(extraction['inputs'])} inputs; weights in {weights.name}")
        attributes = {**model.attributes, "adapters": {
            "type": "lora", "format": config["adapter_format"], "file": weights.name, "modules": len(extraction["ranks"]),
            "ranks": ranks, "dynamic_rank": dynamic, "dtype": extraction["dtype"],
            "int4": {"block_size": config["int4_block_size"], "mode": config["int4_quantization_mode"]} if int4 else None,
            "inputs": extraction["inputs"]}}
        return model.relocated(out_dir, hash=folder_sha256(out_dir), attributes=attributes)


def quiet_genai_sessions(folder: Path) -> None:
    """onnxruntime warns once per overridable initializer when a session starts: genai's sessions log
    errors only (olive-systems' own sessions already do)."""
    path = folder / "genai_config.json"
    if not path.is_file():
        return
    config = json.loads(path.read_text())
    options = config.setdefault("model", {}).setdefault("decoder", {}).setdefault("session_options", {})
    options.setdefault("log_severity_level", 3)
    path.write_text(json.dumps(config, indent=2))


# ---- the graph surgery ----

def extract_lora_inputs(proto, dtype: str | None = None, dynamic_rank: bool = True, int4: dict | None = None) -> dict:
    """Rewrite proto in place (module doc). Returns {"tensors": the exported adapter's file tensors,
    "inputs": the new input names, "ranks": module -> rank, "dtype": the stored dtype}."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = proto.graph
    nodes = list(graph.node)  # the wrappers held for the whole rewrite: removals are found by identity
    modules = find_lora_modules(graph, nodes)
    if not modules and any(LORA_KEY.match(i.name) for i in graph.input):
        raise PassError("the model's LoRA weights are graph inputs already (ExtractAdapters made it)",
                        "serve it as it is: load adapter files with onnxruntime or onnxruntime-genai")
    if not modules:
        raise PassError("the model has no LoRA weights named after peft parameters (<module>.lora_A.weight feeding a "
                        "MatMul whose output feeds the lora_B MatMul)",
                        "export a base with its peft adapter applied unmerged (OnnxConversion of an HfModel with "
                        "adapter_path), before any pass that fuses or quantizes its MatMuls")
    elem = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float16"): TensorProto.FLOAT16}
    initializers = {t.name: t for t in graph.initializer}
    compute_types = {initializers[m["A"]].data_type for m in modules}
    if not compute_types <= set(elem.values()):
        raise PassError("the LoRA weights are neither float32 nor float16", "export the model in float32 or float16")
    for module in modules:  # the weights in MatMul layout, read before their initializers go
        a = numpy_helper.to_array(initializers[module["A"]]).astype(np.float32)
        b = numpy_helper.to_array(initializers[module["B"]]).astype(np.float32)
        module["a"] = a.T if module["A_transpose"] is not None else a
        module["b"] = (b.T if module["B_transpose"] is not None else b) * np.float32(module["scale"])
        module["compute"] = initializers[module["A"]].data_type
    old = {name for module in modules for name in (module["A"], module["B"])}
    kept = [t for t in graph.initializer if t.name not in old]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    removed_nodes, new_nodes = set(), []
    tensors, inputs, ranks = {}, [], {}
    stored = None
    for module in modules:
        a, b, compute = module["a"], module["b"], module["compute"]
        stored = dtype or ("float16" if compute == TensorProto.FLOAT16 else "float32")
        ranks[module["name"]] = int(a.shape[1])
        for key in ("A_transpose", "B_transpose", "mul", "mul_constant"):
            if module[key] is not None:
                removed_nodes.add(id(module[key]))
        if module["mul"] is not None:  # the scaling now lives in B: its consumers read B's MatMul
            _rewire(graph, module["mul"].output[0], module["B_matmul"].output[0])
        for role, weight, matmul in (("A", a, module["A_matmul"]), ("B", b, module["B_matmul"])):
            name = lora_name(module["name"], role)
            if int4 is None:
                tensors.update(cast({name: weight}, stored))
                if dynamic_rank:  # the default is rank 0: the base model
                    shape = [weight.shape[0], RANK_DIM] if role == "A" else [RANK_DIM, weight.shape[1]]
                    default = np.zeros((weight.shape[0], 0) if role == "A" else (0, weight.shape[1]), dtype=stored)
                else:
                    shape, default = list(weight.shape), np.zeros(weight.shape, dtype=stored)
                graph.input.append(helper.make_tensor_value_info(name, elem[np.dtype(stored)], shape))
                graph.initializer.append(numpy_helper.from_array(default, name))
                inputs.append(name)
                matmul.input[1] = _cast_if(new_nodes, name, elem[np.dtype(stored)], compute)
            else:
                quantized = quantize_int4({name: weight}, int4["block_size"], int4["mode"], stored)
                tensors.update(quantized)
                k, n = weight.shape
                feeds = [matmul.input[0]]
                for suffix in (QUANT, SCALES, ZERO_POINTS):
                    if name + suffix not in quantized:
                        continue
                    value = quantized[name + suffix]
                    graph.input.append(helper.make_tensor_value_info(name + suffix, elem.get(value.dtype, TensorProto.UINT8),
                                                                     list(value.shape)))
                    graph.initializer.append(numpy_helper.from_array(np.zeros_like(value), name + suffix))
                    inputs.append(name + suffix)
                    feeds.append(_cast_if(new_nodes, name + suffix, elem[np.dtype(stored)], compute)
                                 if suffix == SCALES else name + suffix)
                replacement = helper.make_node("MatMulNBits", feeds, list(matmul.output), name=matmul.name or None,
                                               domain="com.microsoft", K=int(k), N=int(n), bits=4,
                                               block_size=int(int4["block_size"]))
                removed_nodes.add(id(matmul))
                new_nodes.append((matmul, replacement))
    _apply(graph, nodes, removed_nodes, new_nodes)
    if int4 is not None and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    if proto.ir_version < 4:  # inputs with initializer defaults
        proto.ir_version = 4
    return {"tensors": tensors, "inputs": inputs, "ranks": ranks, "dtype": stored}


def find_lora_modules(graph, nodes: list | None = None) -> list[dict]:
    """Each LoRA module of the graph: its A and B initializers, their MatMuls (and Transposes when the
    weights are stored in peft's layout), and the Mul applying the scaling (None when there is none).
    nodes: graph.node as a list the caller holds (the dicts refer to its members)."""
    from onnx import numpy_helper

    nodes = list(graph.node) if nodes is None else nodes
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    constants = {node.output[0]: node for node in nodes if node.op_type == "Constant"}

    def matmul_of(weight: str):
        users = consumers.get(weight, [])
        if len(users) != 1:
            return None, None
        user = users[0]
        if user.op_type == "MatMul" and user.input[1] == weight:
            return user, None
        if user.op_type == "Transpose" and _perm(user) == [1, 0]:
            after = consumers.get(user.output[0], [])
            if len(after) == 1 and after[0].op_type == "MatMul" and after[0].input[1] == user.output[0]:
                return after[0], user
        return None, None

    def scalar(name: str):
        if name in initializers:
            value = numpy_helper.to_array(initializers[name])
            return (float(value.reshape(-1)[0]), None) if value.size == 1 else (None, None)
        node = constants.get(name)
        if node is not None and node.attribute and node.attribute[0].name == "value":
            value = numpy_helper.to_array(node.attribute[0].t)
            return (float(value.reshape(-1)[0]), node) if value.size == 1 else (None, None)
        return None, None

    by_module: dict[str, dict] = {}
    graph_inputs = {i.name for i in graph.input}  # an input's initializer is a default, not the adapter's weight
    for name in initializers:
        found = LORA_KEY.match(name) if name not in graph_inputs else None
        if found:
            by_module.setdefault(found["module"], {})[found["role"]] = name
    modules = []
    for module, weights in by_module.items():
        if set(weights) != {"A", "B"}:
            raise PassError(f"{module} has a LoRA {'A' if 'A' in weights else 'B'} weight but no "
                            f"{'B' if 'A' in weights else 'A'}", "export the model again from the peft model")
        a_matmul, a_transpose = matmul_of(weights["A"])
        b_matmul, b_transpose = matmul_of(weights["B"])
        if a_matmul is None or b_matmul is None or b_matmul.input[0] != a_matmul.output[0] \
                or len(consumers.get(a_matmul.output[0], [])) != 1:
            raise PassError(f"{module}: its LoRA weights are not a MatMul chain x @ A @ B (the graph was changed "
                            "after the export?)", "extract adapters right after OnnxConversion")
        scale, mul, mul_constant = 1.0, None, None
        users = consumers.get(b_matmul.output[0], [])
        if len(users) == 1 and users[0].op_type == "Mul":
            other = [i for i in users[0].input if i != b_matmul.output[0]]
            if len(other) == 1:
                value, constant = scalar(other[0])
                if value is not None:
                    scale, mul = value, users[0]
                    if constant is not None and len(consumers.get(constant.output[0], [])) == 1:
                        mul_constant = constant
        modules.append({"name": module, "A": weights["A"], "B": weights["B"], "A_matmul": a_matmul, "B_matmul": b_matmul,
                        "A_transpose": a_transpose, "B_transpose": b_transpose, "scale": scale, "mul": mul,
                        "mul_constant": mul_constant})
    return modules


def _perm(node) -> list:
    return list(_attr(node, "perm", [1, 0]))  # no perm: reverse the axes


def _cast_if(new_nodes: list, name: str, stored: int, compute: int) -> str:
    """name, or the output of a Cast of it to the compute type (appended to new_nodes, placed first)."""
    from onnx import helper

    if stored == compute:
        return name
    output = f"{name}/cast"
    new_nodes.append((None, helper.make_node("Cast", [name], [output], name=f"{name}/Cast", to=compute)))
    return output


def _rewire(graph, old: str, new: str) -> None:
    for node in graph.node:  # noqa: the held wrappers and these edit the same messages
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for output in graph.output:
        if output.name == old:
            raise PassError(f"the LoRA scaling output {old} is a graph output", "export the model again")


def _apply(graph, nodes: list, removed_nodes: set, new_nodes: list) -> None:
    """Drop removed nodes (replacements take their place, Casts go first) and the value_info of
    tensors nothing produces any more. nodes: the held wrappers of graph.node."""
    import onnx

    replacements = {id(old): new for old, new in new_nodes if old is not None}
    result = [new for old, new in new_nodes if old is None]
    for node in nodes:
        if id(node) in replacements:
            result.append(replacements[id(node)])
        elif id(node) not in removed_nodes:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            result.append(copy)
    del graph.node[:]
    graph.node.extend(result)
    produced = {out for node in graph.node for out in node.output} | {i.name for i in graph.input}
    values = [v for v in graph.value_info if v.name in produced]
    del graph.value_info[:]
    graph.value_info.extend(values)
