"""OrtSessionParamsTuning: time session settings and keep the fastest in the inference config."""

from __future__ import annotations

from pathlib import Path

from ..models import ModelRef, copy_tree
from ..ort import EXECUTION_MODES, create_session, dummy_feed
from .base import Pass, PassContext
from .session_tuning_options import (OPTIONS_SCHEMA, candidate_settings, decode_step_feed, describe, make_runner,
                                     tuned_providers, with_required_options, write_profile)
from .tuning_choice import DEFAULT, MEASURING_SCHEMA, choose, default_settings


class OrtSessionParamsTuning(Pass):
    measures_timing = True
    description = "Try thread counts, execution modes and graph levels; record the fastest as inference settings."
    config_schema = {
        "data_config": {"type": ["string", "null"], "default": None,
                        "description": "inputs to time with; null times dummy inputs"},
        "dummy_sequence_length": {"type": "integer", "minimum": 1, "default": 128},
        "intra_op_thread_num_list": {"type": ["array", "null"], "items": {"type": "integer", "minimum": 0},
                                     "default": None, "description": "null: 1 up to the CPU count"},
        "inter_op_thread_num_list": {"type": "array", "items": {"type": "integer", "minimum": 0}, "default": [1]},
        "execution_mode_list": {"type": "array", "items": {"enum": list(EXECUTION_MODES)},
                                "default": ["ORT_SEQUENTIAL"]},
        "opt_level_list": {"type": "array", "items": {"enum": [0, 1, 2, 99]}, "default": [99]},
        "warmup_num": {"type": "integer", "minimum": 0, "default": 5},
        "test_num": {"type": ["integer", "null"], "minimum": 1, "default": None,
                     "description": "at most this many timed calls per setting and shape; null: as budget_s allows"},
        **MEASURING_SCHEMA,  # workload, budget_s, precision, busy_cores
        **OPTIONS_SCHEMA,  # providers_list, io_bind, cuda graph, TensorRT fp16, extra config, profiling, KV cache
    }

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        providers = tuned_providers(config, ctx.accelerator.execution_provider)  # refusals before any session
        feed = None
        if config["data_config"]:
            feed = ctx.load_data(config["data_config"], model).inputs[0]
        # Every setting and ONNX Runtime's default, timed interleaved on every shape (tuning_choice).
        target = ctx.accelerator.execution_provider
        grid = [(describe(settings), settings) for settings in candidate_settings(config, providers)]
        arms = {}
        for name, settings in [(DEFAULT, with_required_options(default_settings(target), config)), *grid]:
            session = create_session(model.onnx_path, settings, settings["execution_provider"][0][0])
            arms[name] = (settings, lambda inputs, session=session, settings=settings: make_runner(
                session, inputs, settings, model.onnx_path))
            if name == DEFAULT:
                reference_session = session
        shapes = _shapes(config, feed, reference_session)
        choice = choose(arms, shapes, config, ctx.log)
        for record in choice.records:
            ctx.log(f"{record['setting']}: {record['median_ms']:.2f} ms, {record['ratio']:.3f}x the default "
                    f"[{record['ratio_interval'][0]:.3f}, {record['ratio_interval'][1]:.3f}]"
                    + (f" ({record['verdict']})" if "verdict" in record else ""))
        ctx.log(choice.reason)
        best, inputs = choice.settings, shapes[0]["feed"]
        copy_tree(Path(model.path), out_dir)  # same model; only the inference settings change
        attributes = {**model.attributes, "tuning": [
            {**record, "execution_provider": arms[record["setting"]][0]["execution_provider"][0][0],
             "io_bind": arms[record["setting"]][0]["io_bind"], **arms[record["setting"]][0]["session_options"]}
            for record in choice.records], "tuning_decision": {"reason": choice.reason, "others_cpu": choice.others_cpu}}
        if config["enable_profiling"]:
            profile = write_profile(model.onnx_path, best, inputs, out_dir)
            attributes["profile"] = profile.name
            ctx.log(f"profile of the fastest setting: {profile.name}")
        return model.relocated(out_dir, inference_settings=best, attributes=attributes)


def _shapes(config: dict, feed: dict | None, session) -> list[dict]:
    """The shapes to time, each with its feed: the workload's, else the data config's one feed, else
    batch 1 x dummy_sequence_length (a decode step after that many tokens with predict_with_kv_cache)."""
    from ..workload import normalized, shape_feed

    def dummy(batch, length):
        if config["predict_with_kv_cache"]:
            return decode_step_feed(session, batch, length)
        return dummy_feed(session, batch, length)

    if config.get("workload"):
        names = [arg.name for arg in session.get_inputs()]
        return [{**shape, "feed": shape_feed(feed, names, shape, dummy)} for shape in normalized(config["workload"])]
    if feed is not None:
        first = next(iter(feed.values()))
        return [{"batch_size": int(first.shape[0]), "sequence_length": int(first.shape[-1]), "weight": 1, "feed": feed}]
    length = config["dummy_sequence_length"]
    return [{"batch_size": 1, "sequence_length": length, "weight": 1, "feed": dummy(1, length)}]
