"""Models made of several components (Olive's `hf_config.components`): e.g. an encoder and a decoder
that are exported, optimized and timed as separate ONNX graphs.

    input_model:
      type: PyTorchModel              # or HfModel with model_script
      model_script: user_script.py
      model_loader: load_model        # the whole model, as usual
      components:
        - name: encoder
          component_func: get_encoder         # component_func(model_handle) -> torch.nn.Module
          io_config: get_encoder_io_config    # a dict, or a function of the model handle returning one
          dummy_inputs_func: encoder_dummy_inputs

The functions get the whole model's handle (load_model(), model_path), as in Olive. OnnxConversion
writes one folder per component, <out>/<name>/model.onnx, plus components.json (the manifest) and
each component's example inputs (dummy_inputs/<name>.npz, used to time it). ONNX passes that
change one graph at a time run on each component in turn (run_pass, called by the runner);
evaluation of such a model measures size_on_disk and latency (each component on its own example
inputs, reported per component and summed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from .errors import PassError, RecipeError
from .models import ModelRef, copy_tree, folder_sha256

MANIFEST = "components.json"
DUMMY_DIR = "dummy_inputs"
FUNCTION_KEYS = ("component_func", "io_config", "dummy_inputs_func")
# Passes that change one ONNX graph on its own, so they can run on each component in turn.
PER_COMPONENT_PASSES = ("OnnxDynamicQuantization", "OnnxFloatToFloat16", "OrtTransformersOptimization",
                        "OnnxWeightOnlyQuantization", "DynamicToFixedShape")
METRICS = ("latency", "size_on_disk")

COMPONENTS_SCHEMA = {
    "type": "array", "minItems": 1,
    "description": "a model of several components (Olive's hf_config.components): each exported to its own ONNX "
                   "graph; the functions are in model_script and get the whole model's handle",
    "items": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]+$", "description": "the component's folder name"},
            "component_func": {"type": "string", "description": "component_func(model) -> torch.nn.Module"},
            "io_config": {"type": ["object", "string"], "description": "dict, or a function in model_script"},
            "dummy_inputs_func": {"type": "string", "description": "dummy_inputs_func(model) -> the example inputs"},
        },
        "required": ["name", "component_func", "io_config", "dummy_inputs_func"],
        "additionalProperties": False,
    },
}


def components(model: ModelRef) -> list[dict]:
    return model.attributes.get("components") or []


def is_composite(model: ModelRef) -> bool:
    return bool(components(model))


# ---- validation before any work ----

def check_components(spec: dict, where: str) -> None:
    """Names unique; a model_script that defines every function the components name."""
    from .pytorch_model import load_script, script_function

    names = [component["name"] for component in spec["components"]]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RecipeError(f"{where}: input_model.components: the name {repeated[0]!r} is used more than once",
                          "give each component its own name (it is the component's folder)")
    if spec["type"] == "OnnxModel":
        raise RecipeError(f"{where}: input_model.components is for a PyTorchModel or HfModel (its components are exported "
                          "from torch), not an OnnxModel", "use type: PyTorchModel or HfModel with model_script")
    if not spec.get("model_script"):
        raise RecipeError(f"{where}: input_model.components name functions, but there is no model_script",
                          "add model_script: the .py file that defines them")
    module = load_script(spec["model_script"], spec.get("script_dir"), f"{where}: ")
    for index, component in enumerate(spec["components"]):
        for key in FUNCTION_KEYS:
            if isinstance(component.get(key), str):
                script_function(module, spec["model_script"], component[key], f"components[{index}].{key}", f"{where}: ")


def check_recipe(recipe: dict, where: str) -> None:
    """Passes and metrics a model of several components cannot take, refused before any work."""
    if not recipe["input_model"].get("components"):
        return
    for name, entry in recipe["passes"].items():
        if entry["type"] != "OnnxConversion" and not _per_component(entry["type"]):
            raise RecipeError(f"{where}: passes.{name} ({entry['type']}) cannot run on a model of several components",
                              f"use OnnxConversion and passes that change one graph: {', '.join(PER_COMPONENT_PASSES)}")
    for evaluator, entry in recipe.get("evaluators", {}).items():
        for index, metric in enumerate(entry.get("metrics", [])):
            _check_metric(metric, f"{where}: evaluators.{evaluator}.metrics[{index}]")


def _per_component(pass_type: str) -> bool:
    from .passes import get_pass_class

    return any(cls.__name__ in PER_COMPONENT_PASSES for cls in get_pass_class(pass_type).__mro__)


def _check_metric(metric: dict, where: str) -> None:
    if metric["type"] not in METRICS:
        raise RecipeError(f"{where} ({metric['name']}, {metric['type']}): a model of several components is evaluated "
                          f"by {' and '.join(METRICS)} only", "remove the metric, or evaluate each exported component "
                          "as an OnnxModel of its own")
    if metric["type"] == "latency" and (metric.get("data_config") or metric.get("workload")):
        raise RecipeError(f"{where} ({metric['name']}): each component is timed on its own example inputs "
                          "(dummy_inputs_func); a data_config or workload does not fit components' different inputs",
                          "remove data_config / workload from the metric")


# ---- the whole model's handle: what the user's functions get ----

class HfModelHandle:
    """For an HfModel: model_path and load_model() (the transformers model), as Olive's handler has."""

    def __init__(self, ref: ModelRef):
        self.ref, self.model_path, self._model = ref, ref.path, None

    def load_model(self):
        if self._model is None:
            from .models import load_hf_model

            self._model = load_hf_model(self.ref).eval()
        return self._model


def _handle_and_script(model: ModelRef):
    from .pytorch_model import PyTorchModelHandle, load_script

    if model.type == "PyTorchModel":
        handle = PyTorchModelHandle(model)
        return handle, handle.model_script, load_script(handle.model_script, handle.script_dir)
    return HfModelHandle(model), model.model_script, load_script(model.model_script)


class TorchComponent:
    """One component in torch: its module, io_config and example inputs (a tuple, and the forward()
    keywords they go to, or None)."""

    def __init__(self, spec: dict, handle, script: str, module):
        import torch

        from .pytorch_model import checked_io_config, example_inputs, int_axes, script_function

        def function(key: str):
            return script_function(module, script, spec[key], f"components.{spec['name']}.{key}")

        self.name = spec["name"]
        self.module = function("component_func")(handle)
        if not isinstance(self.module, torch.nn.Module):
            raise PassError(f"component '{self.name}': {spec['component_func']} returned {type(self.module).__name__}, "
                            "not a torch.nn.Module", "return the component's module from component_func")
        self.module.eval()
        io_config = checked_io_config(spec["io_config"] if isinstance(spec["io_config"], dict)
                                      else function("io_config")(handle), f"component '{self.name}':")
        axes = int_axes(io_config.get("dynamic_axes"))
        self.io_config = {"input_names": list(io_config["input_names"]), "output_names": list(io_config["output_names"]),
                          **({"dynamic_axes": axes} if axes else {})}
        # a dict's keys are forward() keywords; io_config names the ONNX inputs
        self.dummy, self.keywords = example_inputs(function("dummy_inputs_func")(handle))
        if len(self.dummy) != len(self.io_config["input_names"]):
            raise PassError(f"component '{self.name}': dummy_inputs_func gives {len(self.dummy)} inputs, io_config names "
                            f"{len(self.io_config['input_names'])} ({self.io_config['input_names']})",
                            "make them agree: one example tensor per input name")

    def feed(self) -> dict:
        return {name: value.numpy() for name, value in zip(self.io_config["input_names"], self.dummy)}


def torch_components(model: ModelRef) -> list[TorchComponent]:
    handle, script, module = _handle_and_script(model)
    return [TorchComponent(spec, handle, script, module) for spec in components(model)]


# ---- conversion: one ONNX graph per component ----

def export_components(model: ModelRef, config: dict, out_dir: Path, log) -> ModelRef:
    """OnnxConversion of a model of several components (config: OnnxConversion's)."""
    import torch

    from .passes.conversion import _KeywordForward, export_onnx, fix_dimensions, to_dtype

    dtype = getattr(torch, config["torch_dtype"]) if config["torch_dtype"] else None
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / DUMMY_DIR).mkdir(exist_ok=True)
    entries = []
    for component in torch_components(model):
        module, dummy = to_dtype(component.module, component.dummy, dtype)
        io_config = component.io_config
        wrapped = _KeywordForward(module, component.keywords, io_config["output_names"])
        folder = out_dir / component.name
        folder.mkdir(exist_ok=True)
        export_onnx(wrapped, dummy, io_config, folder / "model.onnx", config, f"component '{component.name}': ",
                    "check the component's io_config / dummy_inputs_func")
        if config["fixed_param_dict"]:
            fix_dimensions(folder, config["fixed_param_dict"])
        np.savez(out_dir / DUMMY_DIR / f"{component.name}.npz",
                 **{name: value.detach().cpu().numpy() for name, value in zip(io_config["input_names"], dummy)})
        entries.append({"name": component.name, "io_config": io_config})
        log(f"component '{component.name}' exported to {component.name}/model.onnx")
    return _composite_ref(out_dir, entries, model.task, {"opset": config["target_opset"]})


def _composite_ref(out_dir: Path, entries: list[dict], task, attributes: dict) -> ModelRef:
    (out_dir / MANIFEST).write_text(json.dumps({"components": entries}, indent=1))
    return ModelRef(type="OnnxModel", path=str(out_dir), hash=folder_sha256(out_dir), task=task,
                    attributes={**attributes, "components": entries})


# ---- the other passes: each component in turn ----

def run_pass(pass_obj, pass_type: str, model: ModelRef, config: dict, out_dir: Path, ctx) -> ModelRef:
    """Runs a pass on a model of several components: OnnxConversion exports each; an ONNX pass that
    changes one graph runs on each component's graph; any other pass is refused."""
    names = ", ".join(c["name"] for c in components(model))
    if model.type != "OnnxModel":
        if pass_type != "OnnxConversion":
            raise PassError(f"{pass_type} cannot take a {model.type} of several components ({names})",
                            "convert it with OnnxConversion first")
        return export_components(model, config, out_dir, ctx.log)
    if not _per_component(pass_type):
        raise PassError(f"{pass_type} cannot run on a model of several components ({names})",
                        f"use passes that change one graph at a time: {', '.join(PER_COMPONENT_PASSES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    root, entries, attributes = Path(model.path), [], {}
    for entry in components(model):
        folder = root / entry["name"]
        part = ModelRef(type="OnnxModel", path=str(folder), hash=folder_sha256(folder), task=model.task,
                        io_config=entry["io_config"], inference_settings=model.inference_settings,
                        attributes={k: v for k, v in model.attributes.items() if k != "components"})
        ctx.log(f"component '{entry['name']}'")
        result = pass_obj.run(part, config, out_dir / entry["name"], ctx)
        if Path(result.path).resolve() != (out_dir / entry["name"]).resolve():  # a pass that gave its input back
            copy_tree(Path(result.path), out_dir / entry["name"])
        entries.append({"name": entry["name"], "io_config": result.io_config or entry["io_config"]})
        attributes.update({k: v for k, v in result.attributes.items() if k != "components"})
    if (root / DUMMY_DIR).is_dir():
        shutil.copytree(root / DUMMY_DIR, out_dir / DUMMY_DIR, dirs_exist_ok=True)
    return _composite_ref(out_dir, entries, model.task, attributes)


# ---- evaluation: size on disk, and latency per component ----

class _ComponentRunner:
    def timed(self, feed: dict):
        """A no-argument call of the component on feed (the runner contract timing uses)."""
        return lambda: self(feed)


class _OnnxComponentRunner(_ComponentRunner):
    def __init__(self, folder: Path, feed_file: Path, settings, execution_provider: str, intra_op_threads):
        from .ort import create_session

        self.session = create_session(folder / "model.onnx", settings, execution_provider, intra_op_threads)
        self.input_names = [arg.name for arg in self.session.get_inputs()]
        with np.load(feed_file) as stored:  # an input the exporter dropped (unused) is not fed
            self.feed = {name: stored[name] for name in stored.files if name in self.input_names}

    def __call__(self, feed: dict):
        return self.session.run(None, feed)

    def dummy_feed(self) -> dict:
        return self.feed


class _TorchComponentRunner(_ComponentRunner):
    def __init__(self, component: TorchComponent):
        self.component = component
        self.input_names = component.io_config["input_names"]

    def __call__(self, feed: dict):
        import torch

        args = [torch.from_numpy(feed[name]) for name in self.input_names]
        with torch.inference_mode():
            if self.component.keywords:
                return self.component.module(**dict(zip(self.component.keywords, args)))
            return self.component.module(*args)

    def dummy_feed(self) -> dict:
        return self.component.feed()


def evaluate(model: ModelRef, metrics: list[dict], execution_provider: str, intra_op_threads, log) -> tuple[dict, dict]:
    """size_on_disk of all the components; latency of each on its example inputs, summed: a sub-type's
    value is the sum, its by_component the figure of each."""
    from .evaluation.generative import weight_bytes
    from .evaluation.metrics import metric_records

    for metric in metrics:
        _check_metric(metric, f"metric '{metric['name']}'")
    runners = None
    results = {}
    for metric in metrics:
        details: dict = {}
        if metric["type"] == "size_on_disk":
            size = weight_bytes(model)
            values = {"mb": round(size / 2**20, 4), "bytes": float(size)}
        else:
            if runners is None:
                runners = _runners(model, execution_provider, intra_op_threads)
            values = _latency(metric, runners, details, log or (lambda message: None))
        results.update(metric_records(metric, values, details))
    return results, {}


def _runners(model: ModelRef, execution_provider: str, intra_op_threads) -> dict:
    if model.type == "OnnxModel":
        root = Path(model.path)
        return {entry["name"]: _OnnxComponentRunner(root / entry["name"], root / DUMMY_DIR / f"{entry['name']}.npz",
                                                    model.inference_settings, execution_provider, intra_op_threads)
                for entry in components(model)}
    return {component.name: _TorchComponentRunner(component) for component in torch_components(model)}


def _latency(metric: dict, runners: dict, details: dict, log) -> dict:
    """Each component timed with the metric's settings and an equal share of its budget."""
    from .evaluation.timing import DEFAULT_BUDGET_S, timing_values

    config = dict(metric.get("metric_config") or {})
    config["budget_s"] = float(config.get("budget_s", DEFAULT_BUDGET_S)) / len(runners)
    per_component = {}
    for name, runner in runners.items():
        shown = {**metric, "name": f"{metric['name']} [{name}]", "metric_config": config}
        per_component[name] = timing_values(shown, {"model": runner}, None, {}, log)["model"]
    values = {sub: round(sum(found[sub] for found, _ in per_component.values()), 4)
              for sub in next(iter(per_component.values()))[0]}
    for sub in values:
        details[sub] = {"by_component": {name: found[sub] for name, (found, _) in per_component.items()}}
        intervals = [part.get(sub, {}).get("interval") for _, part in per_component.values()]
        if all(intervals):  # the components are timed apart: the sum's interval is the intervals' ends summed
            details[sub]["interval"] = [round(sum(i[0] for i in intervals), 4), round(sum(i[1] for i in intervals), 4)]
    return values
