"""The translation of one Olive config: the top level and the engine; the sections in mixins."""

from __future__ import annotations

import copy

from ..errors import RecipeError
from .models_data import ModelsAndData
from .passes import Passes
from .systems_metrics import SystemsAndMetrics
from .tables import ACCEPTED_DEFAULTS, ENGINE_KEYS, UNSUPPORTED_TOP


def translate(raw: dict, name: str = "config") -> dict:
    """An Olive config -> a native recipe dict. Raises RecipeError naming every unsupported key."""
    translator = _Translator(copy.deepcopy(raw), name)
    recipe = translator.run()
    if translator.problems:
        problems = list(dict.fromkeys(translator.problems))
        raise RecipeError(f"{name} (an Olive config) uses what olive-systems does not support:\n" + "\n".join(problems),
                          "change each key as its line says; `olive-systems convert-config` writes the native recipe "
                          "once the config translates")
    return recipe


def _native():
    """The live native schemas (other modules add keys; the translation follows them)."""
    from ..data import DATA_CONFIG_SCHEMA
    from ..evaluation.metrics import METRIC_SCHEMA, METRIC_TYPES
    from ..recipe import recipe_schema

    return recipe_schema(), DATA_CONFIG_SCHEMA, METRIC_SCHEMA, METRIC_TYPES


class _Translator(ModelsAndData, SystemsAndMetrics, Passes):
    def __init__(self, raw: dict, name: str):
        self.raw, self.name = raw, name
        self.problems: list[str] = []
        self.schema, self.data_schema, self.metric_schema, self.metric_types = _native()
        self.out: dict = {}
        self.data_configs: list[dict] = []
        self.input_data: str | None = None
        self.model_names: set = set()
        self.task = None
        self.systems: dict = {}

    def bad(self, where: str, message: str) -> None:
        self.problems.append(f"{where}: {message}")

    # ---- top level ----

    def run(self) -> dict:
        raw = self.raw
        engine = raw.pop("engine", None) or {}
        if not isinstance(engine, dict):
            self.bad("engine", "must be a mapping")
            engine = {}
        for key in list(raw):
            if key in ENGINE_KEYS:  # current Olive: the engine's keys at the top level
                engine[key] = raw.pop(key)
        self.azureml_client = raw.pop("azureml_client", None)
        self.execution_providers = engine.pop("execution_providers", None)
        raw.pop("$schema", None)
        for key in list(raw):
            if key in UNSUPPORTED_TOP:
                value = raw.pop(key)
                if value not in ACCEPTED_DEFAULTS.get(key, []):
                    self.bad(key, f"not supported: {UNSUPPORTED_TOP[key]}")
        if "description" in raw:
            self.out["description"] = raw.pop("description")
        self.input_model(raw.pop("input_model", None))
        for index, dc in enumerate(self._data_list(raw.pop("data_configs", None))):
            self.data_config(dc, f"data_configs[{index}]")
        self.system_section(raw.pop("systems", None) or {})
        if not self.systems and self.execution_providers:  # the seed form's EPs for the default local system
            self.systems["local_system"] = self.system({"type": "LocalSystem", "accelerators": ["cpu"]}, "engine")
        self.evaluators = {}
        for ev_name, evaluator in (raw.pop("evaluators", None) or {}).items():
            self.evaluator(ev_name, evaluator)
        self.engine(engine)
        self.passes(raw.pop("passes", None) or {}, raw.pop("pass_flows", None))
        for key in [key for key in raw if key in self.schema["properties"] and key not in ("extends", "$schema")]:
            self.out[key] = raw.pop(key)  # a native key (workload) in an Olive config: as it is
        for key in raw:
            self.bad(key, "not an Olive config key olive-systems knows; the keys are input_model, systems, data_configs, "
                          "evaluators, passes, pass_flows, engine (or the engine's keys at the top level)")
        if self.azureml_client is not None:
            used = any(s.get("type") == "AzureMLSystem" for s in self.systems.values())
            path = (self.out.get("input_model") or {}).get("model_path")
            if isinstance(path, dict) and path.get("type") in ("azureml_model", "azureml_datastore"):
                path.setdefault("azureml_client", self._azureml_client(self.azureml_client, "azureml_client")["azureml_client"])
                used = True
            if not used:
                self.bad("azureml_client", "nothing here uses it (no AzureML system or asset): remove it")
        if self.data_configs:
            self.out["data_configs"] = self.data_configs
        if self.systems:
            self.out["systems"] = self.systems
        if self.evaluators:
            self.out["evaluators"] = self.evaluators
        order = ["description", "input_model", "data_configs", "systems", "evaluators", "passes", "pass_flows", "engine"]
        return {**{key: self.out[key] for key in order if key in self.out},
                **{key: value for key, value in self.out.items() if key not in order}}

    @staticmethod
    def _flat(entry: dict) -> dict:
        """Olive's `config` sub-dictionary merged into its parent (both generations allow either)."""
        entry = dict(entry)
        nested = entry.pop("config", None) or {}
        return {**nested, **entry}

    # ---- engine ----

    def engine(self, engine: dict) -> None:
        native_props = self.schema["properties"]["engine"]["properties"]
        native: dict = {}
        output_name = engine.pop("output_name", None)
        for key, value in engine.items():
            if key in ("host", "target"):
                native[key] = self._system_ref(value, f"engine.{key}")
            elif key == "evaluator":
                native[key] = self._evaluator_ref(value, "engine.evaluator")
            elif key == "search_strategy":
                native[key] = self.search_strategy(value)
            elif key == "cache_dir" and isinstance(value, list):
                self.bad("engine.cache_dir", "one folder only; for a shared cache use engine.shared_cache")
            elif key in native_props:
                native[key] = value
            elif value not in ACCEPTED_DEFAULTS.get(key, []):
                self.bad(f"engine.{key}", f"not supported: {UNSUPPORTED_TOP.get(key, 'remove it')}")
        if output_name:  # Olive prefixes the output files; here each run's outputs get their own folder
            native["output_dir"] = f"{str(native.get('output_dir', 'outputs')).rstrip('/')}/{output_name}"
        self.out["engine"] = native

    def _system_ref(self, value, where: str):
        if isinstance(value, dict):  # an inline system: named after where it is used
            name = where.split(".")[-1] + "_system"
            self.systems[name] = self.system(value, where)
            return name
        return value

    def _evaluator_ref(self, value, where: str):
        if isinstance(value, dict):
            self.evaluator("evaluator", value)
            return "evaluator"
        return value

    def search_strategy(self, strategy):
        if strategy in (None, False):
            return None
        if strategy is True:
            return {"execution_order": "joint", "search_algorithm": "exhaustive"}
        strategy = dict(strategy)
        native: dict = {}
        if "execution_order" in strategy:
            native["execution_order"] = strategy.pop("execution_order")
        algorithm = strategy.pop("sampler", None) or strategy.pop("search_algorithm", None) or "exhaustive"
        native["search_algorithm"] = algorithm
        config = {**(strategy.pop("search_algorithm_config", None) or {}), **(strategy.pop("sampler_config", None) or {})}
        for key in ("num_samples", "max_samples", "seed"):
            if key in strategy:
                config[key] = strategy.pop(key)
        samples = config.pop("max_samples", None) or config.pop("num_samples", None)
        if samples:  # Olive's max_samples caps the points of any sampler
            if native["search_algorithm"] in ("random", "tpe"):
                native.setdefault("search_algorithm_config", {})["num_samples"] = samples
            else:
                native["max_iter"] = samples
        if "seed" in config:
            native.setdefault("search_algorithm_config", {})["seed"] = config.pop("seed")
        for key in config:
            self.bad(f"engine.search_strategy.{key}", "not supported; a sampler here takes max_samples and seed")
        for key in ("stop_when_goals_met", "max_iter", "max_time"):
            if key in strategy:
                native[key] = strategy.pop(key)
        if strategy.pop("include_pass_params", True) is not True:
            self.bad("engine.search_strategy.include_pass_params", "not supported: results always name the pass settings")
        if strategy.pop("output_model_num", None) is not None:
            self.bad("engine.search_strategy.output_model_num", "not supported: every candidate is ranked in the output "
                                                                "folder; package the best with packaging_config")
        for key in strategy:
            self.bad(f"engine.search_strategy.{key}", "not supported")
        return native
