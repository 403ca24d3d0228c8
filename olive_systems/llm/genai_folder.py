"""genai_config.json for an exported decoder, so every generative candidate folder runs as is with
onnxruntime-genai (tokenizer, chat template and generation settings beside the model)."""

from __future__ import annotations

import json
from pathlib import Path

from .spec import DecoderSpec

GENAI_CONFIG = "genai_config.json"
# Model types onnxruntime-genai runs as a plain decoder; anything else runs as the llama family
# (the decoder graph itself is model-agnostic; the type only picks genai's model class).
GENAI_TYPES = {"llama", "mistral", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2", "granite", "olmo", "smollm3", "gpt2"}


def write_genai_config(folder: Path, spec: DecoderSpec, io_config: dict, source: Path | None = None) -> None:
    """A decoder export: its inputs/outputs as named in io_config, past and present not sharing a buffer."""
    names = io_config["input_names"]
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
    if "position_ids" in names:
        inputs["position_ids"] = "position_ids"
    outputs = {"logits": "logits"}
    past = [n for n in names if n.endswith(".key") or n.endswith(".value")]
    if past:
        prefix = past[0][: -len(".0.key")]
        inputs.update(past_key_names=f"{prefix}.%d.key", past_value_names=f"{prefix}.%d.value")
        outputs.update(present_key_names="present.%d.key", present_value_names="present.%d.value")
    generation = _generation_config(source)
    eos = generation.get("eos_token_id", spec.eos_token_id)
    eos = eos if isinstance(eos, list) else [eos]
    config = {
        "model": {
            "bos_token_id": generation.get("bos_token_id", spec.bos_token_id),
            "context_length": spec.context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": spec.head_size,
                "hidden_size": spec.hidden_size,
                "inputs": inputs,
                "outputs": outputs,
                "num_attention_heads": spec.num_heads,
                "num_hidden_layers": spec.num_layers,
                "num_key_value_heads": spec.num_kv_heads,
            },
            "eos_token_id": eos[0] if len(eos) == 1 else eos,
            "pad_token_id": spec.pad_token_id if spec.pad_token_id is not None else eos[0],
            "type": spec.model_type if spec.model_type in GENAI_TYPES else "llama",
            "vocab_size": spec.vocab_size,
        },
        "search": {
            "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": spec.context_length,
            "min_length": 0, "past_present_share_buffer": False, "repetition_penalty": 1.0, "temperature": 1.0,
            "top_k": 1, "top_p": 1.0, "length_penalty": 1.0, "early_stopping": True, "no_repeat_ngram_size": 0,
            "diversity_penalty": 0.0,
        },
    }
    (Path(folder) / GENAI_CONFIG).write_text(json.dumps(config, indent=2))


def _generation_config(source: Path | None) -> dict:
    path = Path(source) / "generation_config.json" if source else None
    return json.loads(path.read_text()) if path and path.is_file() else {}


def is_genai_folder(folder: Path) -> bool:
    return (Path(folder) / GENAI_CONFIG).is_file()
