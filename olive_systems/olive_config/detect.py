"""Telling an Olive config from a native recipe."""

from __future__ import annotations

from .tables import ENGINE_KEYS, OLIVE_ONLY_MODEL_TYPES, PASS_RENAMES, UNSUPPORTED_TOP, SEARCHABLE


def is_olive_config(raw: dict) -> bool:
    """True for a config in either Olive form; a native recipe has none of these marks."""
    if not isinstance(raw, dict):
        return False
    if set(raw) & (ENGINE_KEYS | set(UNSUPPORTED_TOP) | {"azureml_client"}):
        return True
    model = raw.get("input_model") or {}
    if isinstance(model, dict) and ({"config", "hf_config", "load_kwargs"} & set(model) or
                                    model.get("type") in OLIVE_ONLY_MODEL_TYPES):
        return True
    engine = raw.get("engine") or {}
    if isinstance(engine, dict) and set(engine) & {"execution_providers", "output_name", "cache_config",
                                                   "plot_pareto_frontier", "clean_evaluation_cache"}:
        return True
    if isinstance(engine, dict) and isinstance(engine.get("search_strategy"), (bool, dict)) and (
            isinstance(engine["search_strategy"], bool) or set(engine["search_strategy"]) &
            {"sampler", "sampler_config", "num_samples", "max_samples", "seed", "output_model_num",
             "include_pass_params"}):
        return True
    native_pass_keys = set(_native_schema()["properties"]["passes"]["additionalProperties"]["properties"])
    for entry in (raw.get("passes") or {}).values():
        if not isinstance(entry, dict) or set(entry) - native_pass_keys or entry.get("type") in PASS_RENAMES:
            return True
        if SEARCHABLE in (entry.get("config") or {}).values():
            return True
    for system in (raw.get("systems") or {}).values():
        if isinstance(system, dict) and ("config" in system or any(isinstance(a, str) for a in system.get("accelerators") or [])):
            return True
    for dc in raw.get("data_configs") or []:
        pre = (dc.get("pre_process_data_config") or {}) if isinstance(dc, dict) else {}
        if isinstance(dc, dict) and ({"params_config", "components"} & set(dc) or "label_cols" in pre):
            return True
    return isinstance(raw.get("data_configs"), dict)


def _native_schema() -> dict:
    from ..recipe import recipe_schema

    return recipe_schema()
