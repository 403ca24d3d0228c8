"""SplitModel: cut an ONNX model into parts that run one after another (a model too big for one
device's memory, or a pipeline over several), and the session that runs such a split model.

The nodes, in the graph's topological order, are cut into contiguous parts: `num_splits` parts of
about equal weight bytes, or, with a `cost_model` CSV (generate_cost_model: per-module parameter
bytes), parts packed greedily up to `memory` bytes each. The parts form a chain: part 0 takes the
model's inputs, part i+1 takes exactly what part i gives (a tensor a later part needs is passed
through the parts between), the last part gives the model's outputs. Each part keeps the weights it
uses.

The candidate folder holds part_0.onnx ... part_N-1.onnx and split.json (the parts in order, their
inputs and outputs); `open_session` runs it like one InferenceSession, so evaluation needs nothing
else. A split model is the end of a pass flow (no pass takes it as input).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from ..errors import PassError, RecipeError
from ..models import ModelRef, copy_side_files, file_sha256, folder_sha256, has_external_data, load_onnx
from .base import Pass, PassContext

SPLIT_MANIFEST = "split.json"
COST_COLUMNS = ("module", "num_params", "num_bytes")


class SplitModel(Pass):
    description = ("Split an ONNX model into parts that run in a chain: num_splits parts of equal weight, or parts "
                   "of at most `memory` bytes from a cost_model CSV (generate_cost_model).")
    accelerator_dependent = False
    ends_flow = True  # its output is several ONNX files: no pass takes it
    config_schema = {
        "num_splits": {"type": ["integer", "null"], "minimum": 2, "default": None,
                       "description": "number of parts, of about equal weight bytes"},
        "cost_model": {"type": ["string", "null"], "default": None,
                       "description": "CSV of per-module num_bytes (generate_cost_model); needs memory"},
        "memory": {"type": ["integer", "null"], "minimum": 1, "default": None,
                   "description": "with cost_model: most weight bytes of one part (the device's memory)"},
    }

    @classmethod
    def full_schema(cls) -> dict:
        schema = super().full_schema()
        # exactly one way to cut; a cost model needs a memory budget
        schema["oneOf"] = [{"required": ["num_splits"], "not": {"required": ["cost_model"]}},
                           {"required": ["cost_model", "memory"], "not": {"required": ["num_splits"]}}]
        return schema

    @classmethod
    def resolve_config(cls, config: dict | None) -> dict:
        """The cost model's rows travel in the config: the cache key follows the file's content, and a
        job on another system needs no access to the file."""
        resolved = super().resolve_config(config)
        if resolved.get("cost_model"):
            resolved["cost_model_sha256"] = file_sha256(Path(resolved["cost_model"]))
            resolved["cost_rows"] = read_cost_model(Path(resolved["cost_model"]))
        return resolved

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        proto = load_onnx(Path(model.path))
        nodes = list(proto.graph.node)
        if config.get("cost_rows") is not None:
            costs = _node_costs_from_cost_model(nodes, config["cost_rows"])
            groups = _pack(costs, config["memory"], [_module_of(node.name) for node in nodes])
        else:
            if not config.get("num_splits"):
                raise PassError("SplitModel needs num_splits or cost_model", "set one of them in the pass config")
            groups = _balance(_weight_costs(proto), config["num_splits"])
        parts = build_parts(proto, groups)
        out_dir.mkdir(parents=True, exist_ok=True)
        external = has_external_data(Path(model.path))
        names = []
        for index, part in enumerate(parts):
            name = f"part_{index}.onnx"
            _save(part, out_dir / name, external)
            names.append(name)
        manifest = {"parts": names,
                    "inputs": [v.name for v in parts[0].graph.input],
                    "outputs": [v.name for v in proto.graph.output],
                    "boundaries": [[v.name for v in part.graph.output] for part in parts[:-1]]}
        (out_dir / SPLIT_MANIFEST).write_text(json.dumps(manifest, indent=1))
        copy_side_files(Path(model.path), out_dir)
        ctx.log(f"split into {len(parts)} parts of {[len(g) for g in groups]} nodes")
        return ModelRef(type="OnnxModel", path=str(out_dir), hash=folder_sha256(out_dir), task=model.task,
                        io_config=model.io_config, inference_settings=model.inference_settings,
                        attributes={**model.attributes, "split": {"num_parts": len(parts)}})


# ---- where to cut ----

def _initializer_bytes(proto) -> dict[str, int]:
    import numpy as np
    from onnx import helper

    sizes = {}
    for tensor in proto.graph.initializer:
        count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
        sizes[tensor.name] = count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return sizes


def _weight_costs(proto) -> list[float]:
    """Per node: the bytes of the weights it is the first to use (plus a little, so a graph without
    weights still splits by node count)."""
    sizes, seen, costs = _initializer_bytes(proto), set(), []
    for node in proto.graph.node:
        fresh = [name for name in _used_names(node) if name in sizes and name not in seen]
        seen.update(fresh)
        costs.append(sum(sizes[name] for name in fresh) + 1.0)
    return costs


def _balance(costs: list[float], parts: int) -> list[list[int]]:
    """Contiguous groups of node indices, each about total/parts of the cost."""
    if parts > len(costs):
        raise PassError(f"num_splits {parts} is more than the model's {len(costs)} nodes", "use fewer splits")
    total, groups, current, running = sum(costs), [], [], 0.0
    for index, cost in enumerate(costs):
        current.append(index)
        running += cost
        left_nodes, left_groups = len(costs) - index - 1, parts - len(groups) - 1
        if left_groups and (running >= total * (len(groups) + 1) / parts or left_nodes == left_groups):
            groups.append(current)
            current = []
    groups.append(current)
    return [g for g in groups if g]


def _pack(costs: list[float], memory: int, modules: list[str]) -> list[list[int]]:
    """Contiguous groups, each as many nodes as fit in `memory` bytes."""
    groups, current, running = [], [], 0.0
    for index, cost in enumerate(costs):
        if cost > memory:
            raise PassError(f"module {modules[index]} alone needs {int(cost)} bytes, more than memory ({memory})",
                            "raise memory, or use a lower weight_precision in generate_cost_model")
        if current and running + cost > memory:
            groups.append(current)
            current, running = [], 0.0
        current.append(index)
        running += cost
    groups.append(current)
    return groups


def read_cost_model(path: Path) -> list[list]:
    """[[module, num_params, num_bytes], ...] from a cost model CSV; a bad file is named with its problem."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise RecipeError(f"cost model {path} lacks the columns {missing} (it has {reader.fieldnames})",
                              "write it with generate_cost_model (olive-systems generate-cost-model)")
        try:
            return [[row["module"], int(row["num_params"]), int(float(row["num_bytes"]))] for row in reader]
        except ValueError as exc:
            raise RecipeError(f"cost model {path}: {exc}", "num_params and num_bytes must be numbers") from None


def _module_of(node_name: str) -> str:
    """The module path the TorchScript exporter writes into node names. A child of a Sequential or
    ModuleList is named with its parent: /encoder/layer.0/attention/self/query/MatMul ->
    encoder.layer.0.attention.self.query; /model/conv/conv.0/Conv -> model.conv.0."""
    path: list[str] = []
    for segment in node_name.strip("/").split("/")[:-1]:
        if path and segment.startswith(path[-1] + "."):
            path[-1] = segment
        else:
            path.append(segment)
    return ".".join(path)


def _node_costs_from_cost_model(nodes, rows: list[list]) -> list[float]:
    """Each module's bytes go to the first node of that module; nodes of no module in the cost model
    cost nothing. An export's module paths may carry a wrapper's prefix (model.encoder... for a cost
    model's encoder...): the longest suffix that the cost model names counts."""
    costs_by_module = {module: num_bytes for module, _, num_bytes in rows}
    charged, costs = set(), []
    for node in nodes:
        parts = _module_of(node.name).split(".")
        module = next((".".join(parts[start:]) for start in range(len(parts))
                       if ".".join(parts[start:]) in costs_by_module), None)
        cost = 0.0
        if module is not None and module not in charged:
            charged.add(module)
            cost = float(costs_by_module[module])
        costs.append(cost)
    if not charged:
        raise PassError("no node of the ONNX model names a module of the cost model",
                        "the cost model must come from the model this ONNX file was exported from (TorchScript "
                        "export keeps module names in node names); or use num_splits")
    return costs


# ---- building the parts ----

def _used_names(node) -> list[str]:
    """Inputs of a node, and the outer names its subgraphs (If, Loop, Scan bodies) read."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
        for graph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
            for inner in graph.node:
                names.extend(_used_names(inner))
    return names


def build_parts(proto, groups: list[list[int]]) -> list:
    """One ModelProto per group; part i+1's inputs are exactly part i's outputs."""
    from onnx import helper, shape_inference

    graph = proto.graph
    inferred = _inferred(proto, shape_inference.infer_shapes)
    infos = {v.name: v for v in list(inferred.graph.value_info) + list(graph.input) + list(graph.output)}
    initializers = {t.name: t for t in graph.initializer}
    model_inputs = [v.name for v in graph.input if v.name not in initializers]
    model_outputs = [v.name for v in graph.output]
    nodes = list(graph.node)
    produced_in = {}
    for part, group in enumerate(groups):
        for index in group:
            for name in nodes[index].output:
                produced_in[name] = part
    last_use = {}  # tensor -> the last part that reads it (the final outputs count as read after the last)
    for part, group in enumerate(groups):
        for index in group:
            for name in _used_names(nodes[index]):
                if name not in initializers:
                    last_use[name] = max(last_use.get(name, -1), part)
    for name in model_outputs:
        last_use[name] = len(groups)

    def available_after(part: int) -> list[str]:
        """Tensors that exist once parts 0..part have run and that a later part (or the output) still needs."""
        ordered = model_inputs + [n for g in groups[:part + 1] for i in g for n in nodes[i].output]
        return [n for n in dict.fromkeys(ordered) if produced_in.get(n, -1) <= part and last_use.get(n, -1) > part]

    parts, inputs, symbolic = [], model_inputs, False
    for part, group in enumerate(groups):
        outputs = model_outputs if part == len(groups) - 1 else available_after(part)
        part_nodes = [nodes[i] for i in group]
        used = {n for node in part_nodes for n in _used_names(node)}
        missing = [n for n in outputs + inputs if n not in infos]
        if missing and not symbolic:  # contrib ops (fused Attention, ...) that onnx does not know: ORT's inference
            inferred = _inferred(proto, _symbolic_shapes)
            infos.update({v.name: v for v in inferred.graph.value_info})
            symbolic = True
            missing = [n for n in outputs + inputs if n not in infos]
        if missing:
            raise PassError(f"cannot split here: the types of {missing[:3]} are unknown (shape inference found none)",
                            "cut elsewhere: another num_splits or memory")
        sub = helper.make_graph(part_nodes, f"{graph.name}_part{part}", [infos[n] for n in inputs],
                                [infos[n] for n in outputs],
                                initializer=[initializers[n] for n in initializers if n in used],
                                value_info=[v for v in inferred.graph.value_info if v.name in used])
        model = helper.make_model(sub, opset_imports=proto.opset_import, ir_version=proto.ir_version,
                                  producer_name="olive-systems SplitModel")
        model.functions.extend(proto.functions)
        parts.append(model)
        inputs = outputs
    return parts


def _inferred(proto, infer):
    """The model with value_info for its tensors; the model as it is where inference fails (over 2 GB,
    an op it cannot type): then the tensors it cannot type are named by build_parts."""
    try:
        return infer(proto)
    except Exception:
        return proto


def _symbolic_shapes(proto):
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    return SymbolicShapeInference.infer_shapes(proto, auto_merge=True)


def _save(part, path: Path, external: bool) -> None:
    import onnx

    from ..models import EXTERNAL_DATA_THRESHOLD

    if external or part.ByteSize() > EXTERNAL_DATA_THRESHOLD:
        onnx.save_model(part, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=f"{path.name}.data", size_threshold=1024)
    else:
        onnx.save_model(part, str(path))


# ---- running a split model ----

def is_split(model: ModelRef) -> bool:
    return (Path(model.path) / SPLIT_MANIFEST).is_file()


class ChainSession:
    """A split model's parts as one session: the InferenceSession calls evaluation makes
    (get_inputs, get_outputs, run)."""

    def __init__(self, sessions: list):
        self.sessions = sessions

    def get_inputs(self):
        return self.sessions[0].get_inputs()

    def get_outputs(self):
        return self.sessions[-1].get_outputs()

    def get_providers(self):
        return self.sessions[0].get_providers()

    def run(self, output_names, feed: dict, run_options=None):
        values = feed
        for session in self.sessions:
            wanted = [arg.name for arg in session.get_inputs()]
            names = [arg.name for arg in session.get_outputs()]
            values = dict(zip(names, session.run(None, {name: values[name] for name in wanted}, run_options)))
        return [values[name] for name in (output_names or list(values))]


def open_session(model: ModelRef, execution_provider: str, intra_op_threads: int | None = None):
    """The session evaluation runs a model in: model.onnx's, or a split model's chain of parts, on the
    EP its inference settings serve it on."""
    from ..ort import create_session, served_provider

    execution_provider = served_provider(model.inference_settings, execution_provider)
    if not is_split(model):
        return create_session(model.onnx_path, model.inference_settings, execution_provider, intra_op_threads)
    folder = Path(model.path)
    names = json.loads((folder / SPLIT_MANIFEST).read_text())["parts"]
    return ChainSession([create_session(folder / name, model.inference_settings, execution_provider, intra_op_threads)
                         for name in names])
