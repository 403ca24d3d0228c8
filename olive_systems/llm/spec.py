"""What every decoder architecture has in common, read once from its HF config: layers, heads, KV
heads (grouped-query attention), head size, vocabulary, context. The KV-cache IO names are the ones
onnxruntime-genai and Optimum use, so an exported folder runs under either."""

from __future__ import annotations

from dataclasses import dataclass

# config.json keys that hold a model's context length, by family (Llama/Qwen/Phi; GPT-2; older GPT-2)
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "n_ctx")
PAST_PREFIX = "past_key_values"
PRESENT_KEY = "present.{}.key"
PRESENT_VALUE = "present.{}.value"


@dataclass(frozen=True)
class DecoderSpec:
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_size: int
    hidden_size: int
    vocab_size: int
    context_length: int
    bos_token_id: int | None
    eos_token_id: list[int]
    pad_token_id: int | None

    @classmethod
    def from_config(cls, config) -> "DecoderSpec":
        """config: a transformers PretrainedConfig or its dict (config.json)."""
        get = (lambda *names, default=None: next((config[n] for n in names if config.get(n) is not None), default)) \
            if isinstance(config, dict) else \
            (lambda *names, default=None: next((getattr(config, n) for n in names if getattr(config, n, None) is not None), default))
        hidden = get("hidden_size", "n_embd", "d_model")
        heads = get("num_attention_heads", "n_head")
        eos = get("eos_token_id")
        return cls(
            model_type=get("model_type", default="unknown"),
            num_layers=get("num_hidden_layers", "n_layer"),
            num_heads=heads,
            num_kv_heads=get("num_key_value_heads", "n_head_kv", default=heads),
            head_size=get("head_dim", default=hidden // heads),
            hidden_size=hidden,
            vocab_size=get("vocab_size"),
            context_length=get(*CONTEXT_KEYS, default=2048),
            bos_token_id=get("bos_token_id"),
            eos_token_id=list(eos) if isinstance(eos, (list, tuple)) else ([eos] if eos is not None else []),
            pad_token_id=get("pad_token_id"),
        )

    def past_names(self, prefix: str = PAST_PREFIX) -> list[str]:
        return [f"{prefix}.{i}.{kind}" for i in range(self.num_layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        return [name.format(i) for i in range(self.num_layers) for name in (PRESENT_KEY, PRESENT_VALUE)]

    def io_config(self, with_past: bool, position_ids: bool = True, past_prefix: str = PAST_PREFIX) -> dict:
        """Input/output names and dynamic axes of a decoder export (past inputs named <past_prefix>.N.key)."""
        inputs = ["input_ids", "attention_mask"] + (["position_ids"] if position_ids else [])
        axes = {"input_ids": {0: "batch_size", 1: "sequence_length"},
                "attention_mask": {0: "batch_size", 1: "total_sequence_length"},
                "position_ids": {0: "batch_size", 1: "sequence_length"},
                "logits": {0: "batch_size", 1: "sequence_length"}}
        outputs = ["logits"]
        if with_past:
            inputs += self.past_names(past_prefix)
            outputs += self.present_names()
            axes.update({name: {0: "batch_size", 2: "past_sequence_length"} for name in self.past_names(past_prefix)})
            axes.update({name: {0: "batch_size", 2: "total_sequence_length"} for name in self.present_names()})
        else:
            axes["attention_mask"] = {0: "batch_size", 1: "sequence_length"}
        return {"input_names": inputs, "output_names": outputs,
                "dynamic_axes": {k: v for k, v in axes.items() if k in inputs + outputs}}
