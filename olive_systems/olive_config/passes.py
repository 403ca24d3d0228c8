"""The passes of an Olive config: pass names, options, SEARCHABLE_VALUES, OnnxQuantization."""

from __future__ import annotations

from .tables import (DEFAULT_OPTIONS, OLIVE_DEFAULTS, OPTION_HINTS, OPTION_RENAMES, PASS_RENAMES, PASS_SUGGESTIONS,
                     STATIC_ONLY, DEFAULT_VALUE, SEARCHABLE)


class Passes:
    """Mixed into the translator: passes and pass_flows."""

    def passes(self, passes: dict, flows) -> None:
        from ..passes import get_pass_class, pass_types

        native_passes: dict = {}
        expansions: dict[str, list[str]] = {}  # an Olive pass -> the native passes standing for it (alternatives)
        searching = self.out["engine"].get("search_strategy") is not None
        for pass_name, entry in passes.items():
            where = f"passes.{pass_name}"
            if isinstance(entry, list):  # current Olive allows a list of configs per pass name
                if len(entry) != 1:
                    self.bad(where, "a list of pass configs is not supported: give each its own pass name and use pass_flows")
                    continue
                entry = entry[0]
            seed_form = "config" in entry  # the older generation searches quant_mode by itself
            entry = self._flat(entry)
            olive_type = entry.pop("type", None)
            native: dict = {}
            if "host" in entry:
                native["host"] = self._system_ref(entry.pop("host"), f"{where}.host")
            evaluator = entry.pop("evaluator", None)
            if evaluator is not None and evaluator != self.out["engine"].get("evaluator"):
                self.bad(f"{where}.evaluator", "a pass-level evaluator is not supported: one evaluator (engine.evaluator) "
                                               "scores every candidate")
            for key in ("output_name", "clean_run_cache"):
                if entry.get(key) in (None, False):
                    entry.pop(key, None)
            pass_disabled = bool(entry.pop("disable_search", False))
            disable_search = pass_disabled or not searching
            if not searching and not pass_disabled and SEARCHABLE in entry.values():
                self.bad(where, "SEARCHABLE_VALUES needs a search: add search_strategy, or set disable_search: true "
                                "(each such option then takes its default), or give the values")
            if olive_type == "OnnxQuantization":
                alternatives = self._onnx_quantization(entry, where, not disable_search, seed_form)
            elif olive_type in PASS_RENAMES or olive_type in pass_types():
                alternatives = [(PASS_RENAMES.get(olive_type) or olive_type, entry)]
            else:
                hint = PASS_SUGGESTIONS.get(olive_type) or f"one of {pass_types()}"
                self.bad(f"{where}.type", f"{olive_type} is not a pass here: use {hint}")
                continue
            names = []
            for native_type, options in alternatives:
                config = self._pass_options(native_type, options, f"{where}", disable_search, get_pass_class(native_type))
                suffix = "" if len(alternatives) == 1 else "_" + ("static" if "Static" in native_type else "dynamic")
                native_passes[pass_name + suffix] = {"type": native_type, **({"config": config} if config else {}), **native}
                names.append(pass_name + suffix)
            expansions[pass_name] = names
        if not native_passes and not self.problems:
            self.bad("passes", "none given: list the passes to run")
        self.out["passes"] = native_passes
        flows = flows or ([list(passes)] if any(len(v) > 1 for v in expansions.values()) else None)
        if flows:
            self.out["pass_flows"] = [expanded for flow in flows for expanded in self._expand(flow, expansions)]

    @staticmethod
    def _expand(flow: list[str], expansions: dict) -> list[list[str]]:
        """A flow through a pass that stands for alternatives becomes one flow per alternative."""
        result = [[]]
        for pass_name in flow:
            choices = expansions.get(pass_name, [pass_name])
            result = [done + [choice] for done in result for choice in choices]
        return result

    def _onnx_quantization(self, options: dict, where: str, searched: bool, seed_form: bool) -> list[tuple[str, dict]]:
        """Olive's OnnxQuantization: quant_mode static / dynamic; searched, both (static where there
        is calibration data). Unset, it is searched in the older generation and static otherwise."""
        mode = options.pop("quant_mode", SEARCHABLE if seed_form else "static")
        if mode == SEARCHABLE and searched:
            modes = ["dynamic", "static"] if options.get("data_config") else ["dynamic"]
        elif mode == SEARCHABLE:
            modes = ["static"]
        elif mode in ("static", "dynamic"):
            modes = [mode]
        else:
            self.bad(f"{where}.quant_mode", f"{mode} is not static or dynamic")
            return []
        if modes == ["static"] and not options.get("data_config"):
            self.bad(f"{where}.data_config", "static quantization (OnnxQuantization's default quant_mode) needs "
                                             "calibration data: name a data config, or set quant_mode: dynamic")
        alternatives = []
        for each in modes:
            these = dict(options)
            if each == "dynamic":  # the static settings do not apply to dynamic quantization (as in Olive)
                for key in STATIC_ONLY:
                    these.pop(key, None)
            alternatives.append(("OnnxStaticQuantization" if each == "static" else "OnnxDynamicQuantization", these))
        return alternatives

    def _pass_options(self, native_type: str, options: dict, where: str, disable_search: bool, pass_class) -> dict:
        schema = pass_class.full_schema()["properties"]
        renames = OPTION_RENAMES.get(native_type, {})
        config = {key: value for key, value in OLIVE_DEFAULTS.get(native_type, {}).items()
                  if key not in options and schema.get(key, {}).get("default") != value}
        for key, value in options.items():
            target = key if key in schema else renames.get(key, key)
            if target not in schema:
                if key in DEFAULT_OPTIONS and value in DEFAULT_OPTIONS[key]:
                    continue
                known = ", ".join(sorted(schema))
                hint = f"{OPTION_HINTS[key]}; " if key in OPTION_HINTS else ""
                self.bad(f"{where}.{key}", f"{native_type} here has no option {key}: {hint}its options: {known}")
                continue
            if value == DEFAULT_VALUE:
                continue
            if value == SEARCHABLE:
                if disable_search:
                    continue  # Olive: a searchable option of a pass that is not searched takes its default
                space = self._space(schema[target])
                if space is None:
                    self.bad(f"{where}.{key}", f"SEARCHABLE_VALUES: {key} has no set of values to search here; "
                                               "give the values as {choices: [...]}")
                    continue
                value = space
            if target == "algorithm" and isinstance(value, str):
                value = {"default": "rtn"}.get(value.lower(), value.lower())
            value = self._list_value(schema[target], value)
            if key.endswith("data_config") and isinstance(value, dict):
                value = self.data_config(value, f"{where}.{key}")
            config[target] = value
        return config

    @staticmethod
    def _list_value(prop: dict, value):
        """Current Olive gives session-tuning lists as one value each (searched); Olive's execution
        modes are ONNX Runtime's numbers (0 sequential, 1 parallel)."""
        types = prop.get("type") if isinstance(prop.get("type"), list) else [prop.get("type")]
        if "array" in types and value is not None and not isinstance(value, (list, dict)):
            value = [value]
        names = (prop.get("items") or {}).get("enum") or []
        if isinstance(value, list) and "ORT_SEQUENTIAL" in names:
            value = [{0: "ORT_SEQUENTIAL", 1: "ORT_PARALLEL"}.get(v, v) for v in value]
        return value

    @staticmethod
    def _space(prop: dict) -> dict | None:
        if "enum" in prop:
            return {"choices": [v for v in prop["enum"] if v is not None]}
        if prop.get("type") == "boolean":
            return {"choices": [False, True]}
        return None
