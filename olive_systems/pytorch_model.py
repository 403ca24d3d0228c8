"""PyTorch-script input models (Olive's `PyTorchModel`): a torch module that a user's script builds.

    input_model:
      type: PyTorchModel
      model_path: weights.pt            # optional: what the loader is given (a file or a folder)
      model_script: user_script.py      # defines the functions named below
      script_dir: src                   # optional: put on sys.path, for the script's own imports
      model_loader: load_model          # model_loader(model_path) -> torch.nn.Module
      io_config: get_io_config          # a dict, or a function of the model handle returning one
      dummy_inputs_func: get_dummy_inputs

Without model_loader, model_path is a file torch.load (a pickled module) or torch.jit.load reads.
The functions io_config and dummy_inputs_func get a PyTorchModelHandle (model_path, load_model()),
as in Olive. Without dummy_inputs_func the export's example inputs come from io_config's
input_shapes and input_types.

Everything the model is made of (the model file, the script and script_dir) is copied once into
a folder of the cache named by its content hash, so a job on any system (venv, docker, AzureML)
finds it beside the model manifest, and the model's hash changes when any of it does.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import sys
import tempfile
from functools import cached_property
from pathlib import Path

import numpy as np

from .errors import PassError, RecipeError
from .models import ModelRef, copy_tree, file_sha256, folder_sha256, link_or_copy, publish_folder

PYTORCH_MODEL = "PyTorchModel"
MANIFEST = "pytorch_model.json"
SCRIPT_KEYS = ("model_loader", "io_config", "dummy_inputs_func")
TORCH_DTYPES = {"float32": "float32", "float": "float32", "float16": "float16", "bfloat16": "bfloat16",
                "int64": "int64", "int32": "int32", "int8": "int8", "uint8": "uint8", "bool": "bool"}


# ---- the user's script ----

def load_script(script: str | Path, script_dir: str | Path | None = None, where: str = ""):
    """The script as a module; script_dir (or the script's own folder) goes on sys.path first, so
    its imports of sibling modules work."""
    from .user_script import _load_module

    for folder in (script_dir, Path(script).parent):
        if folder and str(folder) not in sys.path:
            sys.path.insert(0, str(folder))
    try:
        return _load_module(str(script))
    except RecipeError:
        raise
    except Exception as exc:  # the user's code failed to import: their error, in one line
        raise RecipeError(f"{where}input_model.model_script {script} fails to import: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                          "fix the script (or its script_dir) so that `python -c 'import ...'` works") from exc


def script_functions(module) -> list[str]:
    """The functions a script defines itself (not the ones it imports)."""
    return sorted(name for name, value in vars(module).items()
                  if inspect.isfunction(value) and value.__module__ == module.__name__ and not name.startswith("_"))


def script_function(module, script, name: str, key: str, where: str = ""):
    func = getattr(module, name, None)
    if not callable(func):
        defined = script_functions(module)
        has = f"it defines {', '.join(defined)}" if defined else "it defines no functions"
        raise RecipeError(f"{where}input_model.{key}: '{name}' is not a function in {Path(script).name} ({has})",
                          f"name one of those in input_model.{key}, or define def {name}(...) in {Path(script).name}")
    return func


def checked_io_config(value, who: str) -> dict:
    """io_config as a user's script gives it, refused without input and output names (who: whose it is)."""
    if not isinstance(value, dict) or not value.get("input_names") or not value.get("output_names"):
        raise PassError(f"{who} io_config is {value!r}: it needs input_names and output_names",
                        "return {input_names: [...], output_names: [...], dynamic_axes: {...}} from io_config")
    return value


def example_inputs(dummy) -> tuple[tuple, list | None]:
    """What a dummy_inputs_func returns as (the example tensors, the forward() keywords they go to or
    None): a dict's keys are forward() keywords; a list or tuple, or one tensor, is positional."""
    if isinstance(dummy, dict):
        return tuple(dummy.values()), list(dummy)
    return (tuple(dummy) if isinstance(dummy, (list, tuple)) else (dummy,)), None


def int_axes(dynamic_axes: dict | None) -> dict:
    """dynamic_axes with int axis keys (they come back from a job's JSON as strings; torch wants ints)."""
    return {name: {int(axis): dim for axis, dim in axes.items()} if isinstance(axes, dict) else axes
            for name, axes in (dynamic_axes or {}).items()}


# ---- validation before any work ----

def check_spec(spec: dict, name: str) -> None:
    """What can be known about a PyTorchModel before any work: the script imports and has every
    function the recipe names; io_config is given and can make example inputs."""
    script, script_dir = spec.get("model_script"), spec.get("script_dir")
    if str(spec.get("model_path", "")).startswith("azureml:"):
        raise RecipeError(f"{name}: a PyTorchModel's model_path must be a local file or folder, not {spec['model_path']}",
                          "download the asset (az ml model download) and give its path")
    named = [key for key in SCRIPT_KEYS if isinstance(spec.get(key), str)]
    if script_dir and not Path(script_dir).is_dir():
        raise RecipeError(f"{name}: input_model.script_dir {script_dir} is not a folder", "point script_dir at a folder")
    if named and not script:
        raise RecipeError(f"{name}: input_model.{named[0]} names a function, but there is no model_script",
                          "add model_script: the .py file that defines it")
    if not spec.get("model_loader") and not spec.get("model_path"):
        raise RecipeError(f"{name}: a PyTorchModel needs model_loader (a function in model_script) or model_path "
                          "(a file torch.load reads)", "add model_loader and model_script, or model_path")
    if not spec.get("model_loader") and spec.get("model_path") and Path(spec["model_path"]).is_dir():
        raise RecipeError(f"{name}: input_model.model_path {spec['model_path']} is a folder and there is no model_loader",
                          "add model_loader (a function in model_script that builds the module from the folder), "
                          "or use type: HfModel for a Hugging Face folder")
    if not spec.get("io_config") and not spec.get("components"):  # components have their own (composite.py)
        raise RecipeError(f"{name}: a PyTorchModel needs io_config (its input and output names)",
                          "add io_config: {input_names: [...], output_names: [...], input_shapes: [[...]]} or the "
                          "name of a function in model_script that returns it")
    if isinstance(spec.get("io_config"), dict) and not spec.get("dummy_inputs_func") and not spec["io_config"].get("input_shapes"):
        raise RecipeError(f"{name}: input_model.io_config has no input_shapes and there is no dummy_inputs_func: "
                          "nothing says what example inputs the export should use",
                          "add io_config.input_shapes (and input_types), or dummy_inputs_func")
    if script:
        module = load_script(script, script_dir, f"{name}: ")
        for key in named:
            script_function(module, script, spec[key], key, f"{name}: ")


# ---- the input model: one folder in the cache ----

def input_model(spec: dict, cache_root: Path, extra: bytes = b"") -> ModelRef:
    """The ModelRef of a PyTorchModel: its files copied into cache_root/pytorch/<content hash>/."""
    sources = _sources(spec)
    # io_config and dummy_inputs_func shape the export: part of the model's identity
    digest = hashlib.sha256(extra + json.dumps({k: spec.get(k) for k in ("io_config", "dummy_inputs_func", "components")
                                                if k != "components" or spec.get(k)}, sort_keys=True).encode())
    for relative, path in sources:
        digest.update(relative.encode() + b"\0")
        digest.update((folder_sha256(path) if path.is_dir() else file_sha256(path)).encode() + b"\0")
    manifest = {"model_loader": spec.get("model_loader"),
                "model_path": _model_relative(spec),
                "model_script": _script_relative(spec),
                "script_dir": "code" if spec.get("script_dir") else None}
    digest.update(json.dumps(manifest, sort_keys=True).encode())
    folder = _materialize(Path(cache_root).resolve(), digest.hexdigest(), sources, manifest)
    return ModelRef(type=PYTORCH_MODEL, path=str(folder), hash=digest.hexdigest(), task=None,
                    model_script=None, io_config=spec.get("io_config"), dummy_inputs_func=spec.get("dummy_inputs_func"),
                    inference_settings=spec.get("inference_settings"),
                    attributes={"components": spec["components"]} if spec.get("components") else {})


def _model_relative(spec: dict) -> str | None:
    return f"model/{Path(spec['model_path']).name}" if spec.get("model_path") else None


def _script_relative(spec: dict) -> str | None:
    script, script_dir = spec.get("model_script"), spec.get("script_dir")
    if not script:
        return None
    if script_dir:
        try:
            return f"code/{Path(script).resolve().relative_to(Path(script_dir).resolve()).as_posix()}"
        except ValueError:
            pass
    return f"script/{Path(script).name}"


def _sources(spec: dict) -> list[tuple[str, Path]]:
    """(place in the model folder, source path) of every file or folder the model is made of."""
    found = []
    if spec.get("model_path"):
        found.append((_model_relative(spec), Path(spec["model_path"])))
    if spec.get("script_dir"):
        found.append(("code", Path(spec["script_dir"])))
    relative = _script_relative(spec)
    if relative and relative.startswith("script/"):
        found.append((relative, Path(spec["model_script"])))
    return found


def _materialize(cache_root: Path, digest: str, sources: list[tuple[str, Path]], manifest: dict) -> Path:
    final = cache_root / "pytorch" / digest
    if (final / MANIFEST).is_file():
        return final
    tmp_root = cache_root / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-pytorch-", dir=tmp_root))
    try:
        for relative, path in sources:
            if path.is_dir():
                copy_tree(path, tmp / relative)
            else:
                link_or_copy(path, tmp / relative)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        publish_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ---- using the model: the handle the user's functions get ----

class PyTorchModelHandle:
    """What io_config and dummy_inputs_func receive (Olive passes its model handler): model_path,
    load_model(), io_config; and what conversion and evaluation use."""

    def __init__(self, ref: ModelRef):
        self.ref = ref
        folder = Path(ref.path)
        self.manifest = json.loads((folder / MANIFEST).read_text())
        self.model_path = str(folder / self.manifest["model_path"]) if self.manifest["model_path"] else None
        self.model_script = str(folder / self.manifest["model_script"]) if self.manifest["model_script"] else None
        self.script_dir = str(folder / self.manifest["script_dir"]) if self.manifest["script_dir"] else None

    def _function(self, key: str, name: str):
        return script_function(load_script(self.model_script, self.script_dir), self.model_script, name, key)

    @cached_property
    def model(self):
        import torch

        loader = self.manifest["model_loader"]
        if loader:
            module = self._function("model_loader", loader)(self.model_path)
        else:
            try:  # TorchScript first: torch.load cannot read it
                module = torch.jit.load(self.model_path, map_location="cpu")
            except RuntimeError:
                if self.model_script:  # a pickled module's class is defined in the script
                    load_script(self.model_script, self.script_dir)
                module = torch.load(self.model_path, map_location="cpu", weights_only=False)
        if not isinstance(module, torch.nn.Module):
            raise PassError(f"the PyTorchModel's loader returned {type(module).__name__}, not a torch.nn.Module",
                            "return the module itself from model_loader")
        return module.eval()

    def load_model(self):
        return self.model

    @cached_property
    def io_config(self) -> dict:
        value = self.ref.io_config
        if isinstance(value, str):
            value = self._function("io_config", value)(self)
        return checked_io_config(value, "the PyTorchModel's")

    def dummy_inputs(self) -> tuple[tuple, list | None]:
        """The export's example inputs, and the forward() keywords they go to (None: positional)."""
        if self.ref.dummy_inputs_func:
            return example_inputs(self._function("dummy_inputs_func", self.ref.dummy_inputs_func)(self))
        import torch

        shapes = self.io_config["input_shapes"]
        types = self.io_config.get("input_types") or ["float32"] * len(shapes)
        return tuple(torch.zeros(shape, dtype=getattr(torch, TORCH_DTYPES.get(kind, kind)))
                     for shape, kind in zip(shapes, types)), None

    def export_config(self) -> dict:
        """io_config as torch.onnx.export wants it (only its names and dynamic axes)."""
        return {key: self.io_config[key] for key in ("input_names", "output_names", "dynamic_axes") if key in self.io_config}


class TorchScriptRunner:
    """Runs a PyTorchModel in torch on the CPU for evaluation: feed names are io_config's input names,
    given to forward() in that order; the first output comes back as numpy."""

    def __init__(self, ref: ModelRef):
        self.handle = PyTorchModelHandle(ref)
        self.input_names = list(self.handle.io_config["input_names"])

    def __call__(self, feed: dict) -> np.ndarray:
        import torch

        with torch.inference_mode():
            outputs = self.handle.model(*[torch.from_numpy(feed[name]) for name in self.input_names if name in feed])
        first = outputs[0] if isinstance(outputs, (tuple, list)) else (
            next(iter(outputs.values())) if isinstance(outputs, dict) else outputs)
        return first.numpy()

    def dummy_feed(self) -> dict:
        args, _ = self.handle.dummy_inputs()
        return {name: value.numpy() for name, value in zip(self.input_names, args)}


# ---- the workflow functions' model_script (Olive's command-line convention) ----

# Olive's command line reads these functions from a --model_script
CLI_FUNCTIONS = {"model_loader": "_model_loader", "io_config": "_io_config", "dummy_inputs_func": "_dummy_inputs"}


def script_input_model(model_script: str, script_dir: str | None = None, model_path: str | None = None) -> dict:
    """The input_model of a workflow function given model_script: a PyTorchModel whose script defines
    _model_loader(model_path), _io_config(model) and optionally _dummy_inputs(model), as Olive's
    command line expects; model_path is what _model_loader is given."""
    from .workflows.common import refuse

    script = Path(model_script).expanduser().resolve()
    if not script.is_file():
        refuse("model_script", model_script, "does not exist", "give the .py file that defines _model_loader and _io_config")
    if script_dir and not Path(script_dir).expanduser().is_dir():
        refuse("script_dir", script_dir, "is not a folder", "give the folder model_script imports from")
    spec = {"type": PYTORCH_MODEL, "model_script": str(script)}
    if script_dir:
        spec["script_dir"] = str(Path(script_dir).expanduser().resolve())
    module = load_script(script, spec.get("script_dir"))
    spec.update({key: name for key, name in CLI_FUNCTIONS.items() if callable(getattr(module, name, None))})
    if "io_config" not in spec:
        refuse("model_script", model_script, "defines no _io_config(model) (the model's input and output names)",
               "define def _io_config(model): return {'input_names': [...], 'output_names': [...], "
               "'input_shapes': [[...]]} in it")
    if model_path:
        path = Path(model_path).expanduser()
        if not path.exists():
            refuse("model_name_or_path", model_path, "is not a file or folder (with model_script, it is what "
                   "_model_loader is given)", "give the weights file or folder the loader reads")
        spec["model_path"] = str(path.resolve())
    return spec
