"""Recipes: YAML or JSON -> a validated, normalized dict, with errors that name file, path and fix.

The JSON Schema is built from code (the pass registry contributes each pass's config schema) and
published as schemas/recipe.schema.json, so an editor can complete a recipe.
"""

from __future__ import annotations

import copy
import difflib
import json
from pathlib import Path

from .data import DATA_CONFIG_SCHEMA, with_task_defaults
from .composite import COMPONENTS_SCHEMA, check_components, check_recipe as check_composite
from .errors import RecipeError
from .evaluation.metrics import METRIC_SCHEMA
from .packaging import PACKAGING_SCHEMA
from .resources import RESOURCE_SCHEMA, resolve_resource
from .search import STRATEGY_SCHEMA, dimensions, searchable
from .workload import WORKLOAD_SCHEMA, apply_workload

DEVICES = ["cpu", "gpu", "npu"]
DEFAULT_SYSTEM = {"type": "LocalSystem", "accelerators": [{"device": "cpu", "execution_providers": ["CPUExecutionProvider"]}]}


_WORKSPACE = {
    "subscription_id": {"type": "string", "description": "AzureMLSystem: Azure subscription id"},
    "resource_group": {"type": "string", "description": "AzureMLSystem: resource group of the workspace"},
    "workspace_name": {"type": "string", "description": "AzureMLSystem: AzureML workspace"},
}
# Credentials are never keys here: AzureMLSystem uses DefaultAzureCredential (az login, a managed identity, env vars).
AZUREML_SYSTEM_PROPERTIES = {
    **_WORKSPACE,
    "azureml_client": {
        "type": "object",
        "description": "AzureMLSystem: the workspace, or a config.json from AzureML studio (config_path)",
        "properties": {**_WORKSPACE, "config_path": {"type": "string"}},
        "additionalProperties": False,
    },
    "compute": {"type": "string", "description": "AzureMLSystem: compute cluster the jobs run on"},
    "instance_count": {"type": "integer", "minimum": 1, "default": 1, "description": "AzureMLSystem: nodes per job"},
    "environment_image": {"type": "string",
                          "description": "AzureMLSystem: full image reference the compute pulls, e.g. myacr.azurecr.io/olive-systems/cpu:TAG"},
    "keyvault_name": {"type": "string", "description": "AzureMLSystem: key vault holding the hf-token secret (its name only)"},
    "experiment_name": {"type": "string", "default": "olive-systems", "description": "AzureMLSystem: experiment of the jobs"},
    "poll_s": {"type": "number", "minimum": 0, "default": 10, "description": "AzureMLSystem: seconds between job status polls"},
}
# How a DockerSystem's container confines its jobs (defaults: DEFAULTS in systems/docker.py).
DOCKER_SYSTEM_PROPERTIES = {
    "user": {"type": "string", "pattern": "^[0-9]+(:[0-9]+)?$",
             "description": "DockerSystem: uid:gid the jobs run as; default yours, or 65532:65532 when you are root (never 0)"},
    "cpus": {"type": "number", "exclusiveMinimum": 0, "description": "DockerSystem: CPU limit in cores, e.g. 4; default all"},
    "pids_limit": {"type": "integer", "minimum": 16, "default": 4096, "description": "DockerSystem: most processes and threads"},
    "read_only": {"type": "boolean", "default": True, "description": "DockerSystem: read-only root file system"},
    "tmpfs_size": {"type": "string", "pattern": "^[0-9]+[kmgKMG]?$", "default": "2g",
                   "description": "DockerSystem: size of the tmpfs at /tmp (HOME), the jobs' scratch space"},
    "cap_add": {"type": "array", "items": {"type": "string"}, "default": [],
                "description": "DockerSystem: capabilities given back (all are dropped), e.g. [SYS_NICE]"},
    "no_new_privileges": {"type": "boolean", "default": True, "description": "DockerSystem: no-new-privileges"},
}


def recipe_schema() -> dict:
    from .passes import get_pass_class, pass_types

    pass_entry = {
        "type": "object",
        "properties": {
            "type": {"enum": pass_types()},
            "config": {"type": "object"},
            "host": {"type": "string", "description": "system the pass runs on (default: engine.host)"},
        },
        "required": ["type"],
        "additionalProperties": False,
        "allOf": [
            {"if": {"properties": {"type": {"const": name}}, "required": ["type"]},
             "then": {"properties": {"config": _searchable_config(get_pass_class(name).full_schema())}}}
            for name in pass_types()
        ],
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://olive-systems.dev/schemas/recipe.schema.json",
        "title": "olive-systems recipe",
        "type": "object",
        "properties": {
            "$schema": {"type": "string"},
            "extends": {"type": "string", "description": "start from this recipe; mappings merge, the rest replaces"},
            "description": {"type": "string"},
            "workload": WORKLOAD_SCHEMA,
            "input_model": {
                "type": "object",
                "properties": {
                    "type": {"enum": ["HfModel", "OnnxModel", "PyTorchModel"]},
                    "model_path": RESOURCE_SCHEMA,
                    "task": {"enum": known_tasks(), "default": "feature-extraction",
                             "description": "decides the model class (its head) and the ONNX inputs and outputs"},
                    "gguf_file": {"type": "string", "description": "a GGUF checkpoint inside model_path (HfModel): "
                                  "read once with transformers into a Hugging Face folder in the cache"},
                    "model_script": {"type": "string"},
                    "script_dir": {"type": "string", "description": "PyTorchModel: folder put on sys.path for model_script"},
                    "model_loader": {"type": "string", "description": "PyTorchModel: function in model_script, "
                                     "model_loader(model_path) -> torch.nn.Module"},
                    "io_config": {"type": ["object", "string"], "if": {"type": "object"}, "then": IO_CONFIG_SCHEMA,
                                  "description": "dict, or a function in model_script"},
                    "dummy_inputs_func": {"type": "string"},
                    "inference_settings": {"type": "object"},
                    "revision": {"type": "string", "description": "a hub model_path (org/name): branch, tag or commit "
                                 "(default main); resolved to the commit of the cached snapshot"},
                    "model_class": {"type": "string", "description": "HfModel: the transformers class to load "
                                    "(e.g. LlamaForCausalLM) instead of the task's Auto class"},
                    "components": COMPONENTS_SCHEMA,
                },
                "required": ["type"],
                # a PyTorchModel's loader may build the module without a file
                "if": {"properties": {"type": {"not": {"const": "PyTorchModel"}}}},
                "then": {"required": ["model_path"]},
                "additionalProperties": False,
            },
            "data_configs": {"type": "array", "items": DATA_CONFIG_SCHEMA},
            "systems": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "type": {"enum": ["LocalSystem", "VenvSystem", "DockerSystem", "AzureMLSystem"]},
                        "accelerators": {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "object",
                                "properties": {
                                    "device": {"enum": DEVICES},
                                    "execution_providers": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                                },
                                "required": ["device"],
                                "additionalProperties": False,
                            },
                        },
                        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "default": 3600,
                                      "description": "a job running longer is killed and reported (venv, docker)"},
                        "requirements": {"type": "string", "description": "VenvSystem: pinned requirements file"},
                        "python": {"type": "string", "description": "VenvSystem: use this existing interpreter"},
                        "venv_dir": {"type": "string", "description": "VenvSystem: where built venvs are kept"},
                        "can_run_torch": {"type": "boolean", "description": "VenvSystem: torch is installed there"},
                        "image": {"enum": ["cpu", "openvino", "cuda"], "description": "DockerSystem, AzureMLSystem: image from images/"},
                        "image_tag": {"type": "string", "description": "DockerSystem: use this tag instead"},
                        "memory_limit": {"type": "string", "description": "DockerSystem: container memory limit, e.g. 4g"},
                        **DOCKER_SYSTEM_PROPERTIES,
                        "hf_token": {"type": "boolean", "description": "use the Hugging Face token (HF_TOKEN or the HF "
                                     "token file) for hub models and datasets; it is never written anywhere"},
                        **AZUREML_SYSTEM_PROPERTIES,
                    },
                    "required": ["type"],
                    "additionalProperties": False,
                    "allOf": [
                        {"if": {"properties": {"type": {"const": "VenvSystem"}}},
                         "then": {"anyOf": [{"required": ["requirements"]}, {"required": ["python"]}]}},
                        {"if": {"properties": {"type": {"const": "AzureMLSystem"}}},
                         "then": {"required": ["compute"],
                                  "anyOf": [{"required": ["workspace_name"]}, {"required": ["azureml_client"]}]}},
                    ],
                },
            },
            "evaluators": {
                "type": "object",
                "additionalProperties": {
                    "type": "object",
                    "properties": {"metrics": {"type": "array", "items": METRIC_SCHEMA, "minItems": 1}},
                    "required": ["metrics"],
                    "additionalProperties": False,
                },
            },
            "passes": {"type": "object", "minProperties": 1, "additionalProperties": pass_entry},
            "pass_flows": {
                "type": "array",
                "items": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "description": "each list of pass names gives one candidate; default: all passes in order",
            },
            "engine": {
                "type": "object",
                "properties": {
                    "cache_dir": {"type": "string", "default": ".olive-cache"},
                    "output_dir": {"type": "string", "default": "outputs"},
                    "evaluator": {"type": "string"},
                    "host": {"type": "string", "description": "system for EP-independent passes (conversion)"},
                    "target": {
                        "oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}],
                        "description": "system(s) whose accelerators the candidates are made and evaluated for; "
                                       "EP-dependent passes and evaluations run there",
                    },
                    "max_concurrency": {"type": "integer", "minimum": 1, "default": 1,
                                        "description": "candidates run side by side (measurements never overlap)"},
                    "search_strategy": STRATEGY_SCHEMA,
                    "clean_cache": {"type": "boolean", "default": False},
                    "evaluate_input_model": {"type": "boolean", "default": True},
                    "log_severity_level": {"type": "integer", "minimum": 0, "maximum": 4, "default": 1},
                    "packaging_config": PACKAGING_SCHEMA,
                    "shared_cache": {
                        "type": "object",
                        "description": "Azure Blob container in front of which the local cache sits; credentials come "
                                       "from the environment (connection string) or DefaultAzureCredential, never from here",
                        "properties": {
                            "account_name": {"type": "string"},
                            "container_name": {"type": "string", "pattern": "^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$"},
                            "connection_string_env": {"type": "string", "default": "AZURE_STORAGE_CONNECTION_STRING"},
                        },
                        "required": ["container_name"],
                        "additionalProperties": False,
                    },
                },
                "additionalProperties": False,
            },
        },
        "required": ["input_model", "passes"],
        "additionalProperties": False,
    }


IO_CONFIG_SCHEMA = {
    "type": "object",
    "properties": {
        "input_names": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "output_names": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "input_shapes": {"type": "array", "items": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                         "description": "PyTorchModel: shape of each input's example tensor for the export"},
        "input_types": {"type": "array", "items": {"type": "string"},
                        "description": "PyTorchModel: torch dtype name of each input (default float32)"},
        "dynamic_axes": {"type": "object", "additionalProperties": {"type": "object"},
                         "description": "input/output name -> {axis index: dimension name}"},
    },
    "required": ["input_names", "output_names"],
    "additionalProperties": False,
}


def known_tasks() -> list[str]:
    from .models import HF_TASKS, TASK_ALIASES

    return sorted(HF_TASKS) + sorted(TASK_ALIASES)


def _searchable_config(schema: dict) -> dict:
    """A pass's config schema in which every setting may also be a search space."""
    return dict(schema, properties={key: searchable(prop) for key, prop in schema["properties"].items()})


def load_recipe(source, base_dir: Path | None = None, check_output: bool = False) -> dict:
    """Read, validate and normalize a recipe from a path or a dict. Raises RecipeError.
    check_output: also check that engine.output_dir can be written (`validate`; a run checks the
    folder it was given, overrides included, when it starts)."""
    if isinstance(source, dict):
        name, raw, base = "recipe", copy.deepcopy(source), Path(base_dir or Path.cwd())
    else:
        path = Path(source)
        name, base = path.name, path.resolve().parent
        if not path.is_file():
            raise RecipeError(f"recipe '{source}' not found", "give the path of a .yaml or .json recipe")
        raw = _with_base(_parse(path), path, [path.resolve()])
    from .olive_config import is_olive_config, translate

    if is_olive_config(raw):  # Olive's own config formats run as they are
        raw = translate(raw, name)
    schema = recipe_schema()  # built once: it imports and asks every pass
    _validate(raw, name, schema)
    problems: list[RecipeError] = []  # every problem found from here on is reported at once
    recipe = _normalize(raw, base, name, schema, problems)
    for check in (lambda: _check_references(recipe, name), lambda: check_input_model(recipe["input_model"], name),
                  lambda: check_composite(recipe, name),
                  lambda: check_generation_fits(recipe, name), lambda: apply_workload(recipe, name)):
        try:
            check()
        except RecipeError as exc:
            problems.extend(exc.each)
    from .recipe_checks import recipe_problems

    problems += recipe_problems(recipe, name)
    if check_output:
        from .output_dir import check_output_dir

        try:
            check_output_dir(Path(recipe["engine"]["output_dir"]).resolve())
        except RecipeError as exc:
            problems.append(exc)
    if problems:
        raise RecipeError.all_of(problems)
    return recipe


def _parse(path: Path) -> dict:
    import yaml

    text = path.read_text()
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{path.name}: line {exc.lineno}, column {exc.colno}: invalid JSON: {exc.msg}",
                          "fix the JSON syntax there") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise RecipeError(f"{path.name}: {where}invalid YAML: {problem}", "fix the YAML syntax there") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{path.name}: a recipe must be a mapping at the top level",
                          "start with input_model:, passes: ...")
    return data


def _with_base(data: dict, path: Path, chain: list[Path]) -> dict:
    """`extends: other.yaml` starts from that recipe; mappings merge key by key, anything else replaces."""
    if "extends" not in data:
        return data
    base_path = (path.parent / str(data.pop("extends"))).resolve()
    if base_path in chain:
        raise RecipeError(f"{path.name}: extends {base_path.name}, which extends it back", "break the cycle")
    if not base_path.is_file():
        raise RecipeError(f"{path.name}: extends '{base_path}', which does not exist", "fix the extends path")
    base = _anchor(_with_base(_parse(base_path), base_path, chain + [base_path]), base_path.parent)
    return _merge(base, data)


def _anchor(data: dict, folder: Path) -> dict:
    """A base recipe's relative paths are relative to its own folder, wherever the recipe that
    extends it lives: make them absolute before merging."""
    def anchored(value):
        relative = isinstance(value, str) and not value.startswith("azureml:") and not Path(value).expanduser().is_absolute()
        return str(folder / value) if relative else value

    for holder, key, _where, _remote in _resource_slots(data):
        if key in holder:
            value = holder[key]
            holder[key] = [anchored(v) for v in value] if isinstance(value, list) else anchored(value)
    return data


def _resource_slots(recipe: dict):
    """Every place a recipe names a file or folder: (holder, key, path in the recipe, may be remote)."""
    model = recipe.get("input_model") or {}
    yield model, "model_path", "input_model.model_path", True
    yield model, "model_script", "input_model.model_script", False
    yield model, "script_dir", "input_model.script_dir", False
    for index, dc in enumerate(recipe.get("data_configs") or []):
        yield dc.get("load_dataset_config") or {}, "data_files", f"data_configs[{index}].load_dataset_config.data_files", False
        for key in ("user_script", "tokenizer"):
            yield dc, key, f"data_configs[{index}].{key}", False
    for name, evaluator in (recipe.get("evaluators") or {}).items():
        for index, metric in enumerate(evaluator.get("metrics") or []):
            yield metric.get("user_config") or {}, "user_script", f"evaluators.{name}.metrics[{index}].user_config.user_script", False
    for name, entry in (recipe.get("passes") or {}).items():  # SplitModel's cost_model CSV
        if isinstance((entry.get("config") or {}).get("cost_model"), str):
            yield entry["config"], "cost_model", f"passes.{name}.config.cost_model", False
    for name, system in (recipe.get("systems") or {}).items():
        yield system, "requirements", f"systems.{name}.requirements", False
        yield system.get("azureml_client") or {}, "config_path", f"systems.{name}.azureml_client.config_path", False


def _merge(base, override):
    """A mapping merges into its base key by key, unless the two are different kinds of thing
    (their `type` differs: a package folder replaced by an AzureML model)."""
    if isinstance(base, dict) and isinstance(override, dict) and base.get("type", override.get("type")) == override.get("type", base.get("type")):
        return {**base, **{key: _merge(base.get(key), value) for key, value in override.items()}}
    return override


def _path_text(parts) -> str:
    text = ""
    for part in parts:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _did_you_mean(word, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _validate(raw: dict, name: str, schema: dict) -> None:
    from jsonschema import Draft202012Validator

    messages = []
    for error in _leaf_errors(Draft202012Validator(schema).iter_errors(raw)):
        where = _path_text(error.absolute_path)
        if error.validator == "additionalProperties" and error.schema.get("additionalProperties") is False:
            known = list(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(known)):
                messages.append(f"{name}: {where}: unknown key '{key}'{_did_you_mean(key, known)}")
            continue
        if error.validator == "enum":
            messages.append(f"{name}: {where}: {error.message}{_did_you_mean(error.instance, error.validator_value)}")
        else:
            messages.append(f"{name}: {where}: {error.message}")
    if messages:
        unique = list(dict.fromkeys(messages))
        raise RecipeError("\n".join(unique[:10]), "correct the recipe at the path shown; schemas/recipe.schema.json lists every key")


def _leaf_errors(errors):
    """The errors worth showing. A setting that may be a value or a search space (anyOf) fails as a
    value unless it looks like a search space: report that side's own errors, not "any of"."""
    for error in errors:
        if error.validator in ("if", "allOf"):  # the nested errors carry the useful path
            continue
        if error.validator == "anyOf" and error.context:
            keys = set(error.instance) & {"choices", "range"} if isinstance(error.instance, dict) else set()
            wanted = 0  # the plain value's alternative, unless the instance names a kind of space
            for index, alternative in enumerate(error.validator_value):
                if keys & set(alternative.get("properties", {})):
                    wanted = index
            yield from _leaf_errors(e for e in error.context if e.schema_path[0] == wanted)
            continue
        yield error


def _normalize(raw: dict, base: Path, name: str, schema: dict, problems: list | None = None) -> dict:
    """problems: where a path that cannot be resolved is reported (raised at once without it); the
    slot then keeps a path that does not exist, so later checks skip it."""
    recipe = copy.deepcopy(raw)
    recipe["name"] = name
    recipe["base_dir"] = str(base)
    recipe["input_model"].setdefault("task", "feature-extraction")
    from .hub import resolve_input_model  # a hub id (org/name) becomes its cached snapshot folder

    resolve_input_model(recipe["input_model"], recipe, base, name)

    def resolved(value, where, remote=False):
        try:
            return str(resolve_resource(value, base, f"{name}: {where}", remote=remote))
        except RecipeError as exc:
            if problems is None:
                raise
            problems.append(exc)
            return str(base / (value if isinstance(value, str) else f"<{where}: not found>"))

    for holder, key, where, remote in _resource_slots(recipe):
        value = holder.get(key)
        if not value:
            continue
        if isinstance(value, list) or key == "data_files":  # data_files: always a list from here on
            holder[key] = [resolved(v, where) for v in ([value] if isinstance(value, str) else value)]
        else:
            holder[key] = resolved(value, where, remote)
    data_configs = {}
    for index, dc in enumerate(recipe.get("data_configs", [])):
        if dc["name"] in data_configs:
            raise RecipeError(f"{name}: data_configs[{index}]: data config name '{dc['name']}' is used twice",
                              "give each data config its own name")
        data_configs[dc["name"]] = with_task_defaults(dc, recipe["input_model"]["task"])
    recipe["data_configs"] = data_configs
    recipe.setdefault("systems", {"local_system": copy.deepcopy(DEFAULT_SYSTEM)})
    recipe.setdefault("evaluators", {})
    recipe.setdefault("pass_flows", [list(recipe["passes"])])
    engine = recipe.setdefault("engine", {})
    engine.setdefault("host", next(iter(recipe["systems"])))
    engine.setdefault("target", engine["host"])
    if "evaluator" not in engine and len(recipe["evaluators"]) == 1:
        engine["evaluator"] = next(iter(recipe["evaluators"]))
    for key, prop in schema["properties"]["engine"]["properties"].items():
        if "default" in prop:
            engine.setdefault(key, prop["default"])
    return recipe


def _check_references(recipe: dict, name: str) -> None:
    """Every name a recipe uses must be defined; each undefined name is reported once, with its users."""
    defined = {
        "data config": set(recipe["data_configs"]),
        "pass": set(recipe["passes"]),
        "system": set(recipe["systems"]),
        "evaluator": set(recipe["evaluators"]),
    }
    uses: dict[tuple[str, str], list[str]] = {}

    def use(kind: str, value, where: str):
        if value is not None:
            uses.setdefault((kind, value), []).append(where)

    for evaluator_name, evaluator in recipe["evaluators"].items():
        for index, metric in enumerate(evaluator["metrics"]):
            use("data config", metric.get("data_config"), f"evaluators.{evaluator_name}.metrics[{index}]")
    from .passes import get_pass_class

    for pass_name, entry in recipe["passes"].items():
        for key in get_pass_class(entry["type"]).data_config_keys:
            use("data config", (entry.get("config") or {}).get(key), f"passes.{pass_name}.config.{key}")
        use("system", entry.get("host"), f"passes.{pass_name}.host")
    for index, flow in enumerate(recipe["pass_flows"]):
        for pass_name in flow:
            use("pass", pass_name, f"pass_flows[{index}]")
    engine = recipe["engine"]
    use("system", engine.get("host"), "engine.host")
    for target in engine["target"] if isinstance(engine["target"], list) else [engine["target"]]:
        use("system", target, "engine.target")
    use("evaluator", engine.get("evaluator"), "engine.evaluator")
    messages = []
    for (kind, value), wheres in uses.items():
        if value not in defined[kind]:
            places = ", ".join(dict.fromkeys(wheres))
            messages.append(f"{name}: {kind} '{value}' is not defined (used by {places}){_did_you_mean(value, defined[kind])}")
    if messages:
        raise RecipeError("\n".join(messages), "define it in the recipe or correct the name")
    for index, flow in enumerate(recipe["pass_flows"]):
        for pass_name in flow[:-1]:  # a pass whose output no pass takes (SplitModel) must end its flow
            if getattr(get_pass_class(recipe["passes"][pass_name]["type"]), "ends_flow", False):
                raise RecipeError(f"{name}: pass_flows[{index}]: '{pass_name}' ({recipe['passes'][pass_name]['type']}) "
                                  f"is followed by {flow[flow.index(pass_name) + 1:]}, but no pass takes its output",
                                  f"put '{pass_name}' last in the flow")
    for flow in recipe["pass_flows"]:
        dimensions(flow, recipe["passes"], f"{name}: passes")  # a range that cannot be searched fails now


def check_input_model(spec: dict, name: str) -> None:
    """What can be known about the input model before any work: the GGUF file is there, an HF
    folder has a config and a tokenizer."""
    from .models import is_generative

    if spec.get("components"):  # a model of several components (composite.py)
        check_components(spec, name)
    if spec["type"] == "PyTorchModel":  # its own checks (pytorch_model.py)
        from .pytorch_model import check_spec

        check_spec(spec, name)
        return
    if is_generative(spec.get("task")) and (spec.get("io_config") or spec.get("dummy_inputs_func")):
        raise RecipeError(f"{name}: input_model.io_config / dummy_inputs_func: a decoder's inputs and outputs (its KV "
                          "cache included) come from its config", "remove them from input_model")
    if spec["model_path"].startswith("azureml:"):
        return
    path = Path(spec["model_path"])
    if spec.get("gguf_file"):
        if spec["type"] != "HfModel":
            raise RecipeError(f"{name}: input_model.gguf_file is for an HfModel, not {spec['type']}", "set type: HfModel")
        if not (path / spec["gguf_file"]).is_file():
            present = sorted(p.name for p in path.glob("*.gguf")) if path.is_dir() else []
            raise RecipeError(f"{name}: input_model.gguf_file '{spec['gguf_file']}' is not in {path}",
                              f"use one of {present}" if present else "correct gguf_file or model_path")
        return
    if spec["type"] == "HfModel" and path.is_dir() and any(path.iterdir()):  # an empty one: recipe_checks
        if not (path / "config.json").is_file():  # else transformers lists every model type it knows (10 KB)
            raise RecipeError(f"{name}: input_model.model_path {path} has no config.json: it is not a Hugging Face model folder",
                              "point model_path at the folder save_pretrained wrote (or give gguf_file); for a plain "
                              "torch module use type: PyTorchModel with model_script and model_loader")
        from .recipe_checks import TOKENIZER_FILES

        if not spec.get("model_script") and not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise RecipeError(f"{name}: input_model.model_path {path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})",
                              "save the tokenizer beside the model: AutoTokenizer.from_pretrained(...).save_pretrained(folder)")


def check_generation_fits(recipe: dict, name: str) -> None:
    """A prompt and its continuation longer than the input model's context: refused before any work."""
    timed = [(evaluator, index, metric) for evaluator, entry in recipe["evaluators"].items()
             for index, metric in enumerate(entry["metrics"]) if metric["type"] in ("generation", "memory")]
    context = _context_length(recipe["input_model"]) if timed else None
    if not context:
        return
    from .evaluation.generative import DEFAULTS  # the metrics' own defaults, not a copy

    for evaluator, index, metric in timed:
        config = {**DEFAULTS[metric["type"]], **(metric.get("metric_config") or {})}
        prompt, new = config["prompt_tokens"], config["new_tokens"]
        if prompt + new > context:
            raise RecipeError(f"{name}: evaluators.{evaluator}.metrics[{index}].metric_config: prompt_tokens ({prompt}) + "
                              f"new_tokens ({new}) exceed the model's context of {context} tokens",
                              f"lower prompt_tokens / new_tokens to {context} tokens together")


def _context_length(spec: dict) -> int | None:
    """The input model's context, where it can be read without loading the model."""
    if spec["type"] == "PyTorchModel" or spec["model_path"].startswith("azureml:"):
        return None
    path = Path(spec["model_path"])
    if spec.get("gguf_file"):
        from .llm.gguf import gguf_scalars

        found = [v for k, v in gguf_scalars(path / spec["gguf_file"]).items() if k.endswith(".context_length")]
        return int(found[0]) if found else None
    config = path / "config.json" if path.is_dir() else path.parent / "config.json"
    if not config.is_file():
        return None
    from .llm.spec import CONTEXT_KEYS

    data = json.loads(config.read_text())
    value = next((data[k] for k in CONTEXT_KEYS if data.get(k)), None)
    return int(value) if value else None


def apply_overrides(recipe: dict, output_dir=None, cache_dir=None, clean_cache: bool = False,
                    account_name: str | None = None, container_name: str | None = None,
                    max_concurrency: int | None = None) -> dict:
    """Command-line / API arguments that take precedence over the recipe's engine section."""
    engine = recipe["engine"]
    if max_concurrency is not None:
        if max_concurrency < 1:
            raise RecipeError(f"max concurrency {max_concurrency} is not a positive number", "give 1 or more")
        engine["max_concurrency"] = max_concurrency
    if output_dir is not None:
        engine["output_dir"] = str(output_dir)
    if cache_dir is not None:
        engine["cache_dir"] = str(cache_dir)
    if clean_cache:
        engine["clean_cache"] = True
    if container_name or account_name:
        shared = engine.setdefault("shared_cache", {})
        shared.update({k: v for k, v in {"container_name": container_name, "account_name": account_name}.items() if v})
        if "container_name" not in shared:
            raise RecipeError("--account-name needs a container name for the shared cache", "add --container-name")
    return recipe
