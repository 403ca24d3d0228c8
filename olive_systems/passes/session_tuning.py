"""OrtSessionParamsTuning: time session settings and keep the fastest in the inference config."""

from __future__ import annotations

import itertools
import os
import statistics
from pathlib import Path

from ..models import ModelRef, copy_tree
from ..ort import EXECUTION_MODES, create_session, dummy_feed, measure_latency
from .base import Pass, PassContext


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
        "test_num": {"type": "integer", "minimum": 1, "default": 30},
    }

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        ep = ctx.accelerator.execution_provider
        threads = config["intra_op_thread_num_list"] or sorted({1, os.cpu_count() or 1})
        feed = None
        if config["data_config"]:
            feed = ctx.load_data(config["data_config"], model).inputs[0]
        results = []
        for intra, inter, mode, level in itertools.product(
            threads, config["inter_op_thread_num_list"], config["execution_mode_list"], config["opt_level_list"]
        ):
            settings = {
                "execution_provider": [[ep, {}]],
                "session_options": {"intra_op_num_threads": intra, "inter_op_num_threads": inter,
                                    "execution_mode": EXECUTION_MODES[mode], "graph_optimization_level": level},
            }
            session = create_session(model.onnx_path, settings, ep)
            inputs = feed or dummy_feed(session, 1, config["dummy_sequence_length"])
            times = measure_latency(lambda: session.run(None, inputs), config["warmup_num"], config["test_num"])
            median_ms = statistics.median(times) * 1000
            results.append((median_ms, settings))
            ctx.log(f"intra={intra} inter={inter} {mode} level={level}: {median_ms:.2f} ms")
        best_ms, best = min(results, key=lambda item: item[0])
        copy_tree(Path(model.path), out_dir)  # same model; only the inference settings change
        return model.relocated(
            out_dir,
            inference_settings=best,
            attributes={**model.attributes, "tuning": [{"median_ms": round(ms, 3), **s["session_options"]} for ms, s in results]},
        )
