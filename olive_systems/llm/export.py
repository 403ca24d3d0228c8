"""Export a decoder with its KV cache: a thin module with flat tensor inputs and outputs around the
Hugging Face model, so both the TorchScript and the dynamo exporter see plain tensors in the
onnxruntime-genai / Optimum layout."""

from __future__ import annotations

from .spec import DecoderSpec


def decoder_module(hf_model, spec: DecoderSpec, with_past: bool, position_ids: bool = True):
    import torch

    _attention_without_vmap(hf_model)

    class DecoderWithPast(torch.nn.Module):
        """forward(input_ids, attention_mask[, position_ids], past.0.key, past.0.value, ...) ->
        (logits, present.0.key, present.0.value, ...)."""

        def __init__(self):
            super().__init__()
            self.model = hf_model

        def forward(self, input_ids, attention_mask, *rest):
            keywords = {"input_ids": input_ids, "attention_mask": attention_mask}
            if position_ids:
                keywords["position_ids"], rest = rest[0], rest[1:]
            if with_past:
                from transformers import DynamicCache

                pairs = [(rest[2 * i], rest[2 * i + 1]) for i in range(spec.num_layers)]
                keywords["past_key_values"] = DynamicCache.from_legacy_cache(tuple(pairs))
            outputs = self.model(**keywords, use_cache=with_past, return_dict=True)
            if not with_past:
                return outputs.logits
            cache = outputs.past_key_values
            legacy = cache.to_legacy_cache() if hasattr(cache, "to_legacy_cache") else cache
            return (outputs.logits, *[tensor for pair in legacy for tensor in pair])

    return DecoderWithPast().eval()


def dummy_inputs(spec: DecoderSpec, with_past: bool, position_ids: bool = True, batch: int = 2,
                 sequence: int = 8, past: int = 8, dtype=None) -> tuple:
    """Example inputs with every dynamic axis of a different size, so no two axes are confused."""
    import torch

    total = sequence + past if with_past else sequence
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randint(0, spec.vocab_size, (batch, sequence), generator=generator),
              torch.ones((batch, total), dtype=torch.int64)]
    if position_ids:
        inputs.append(torch.arange(total - sequence, total, dtype=torch.int64).expand(batch, sequence).contiguous())
    if with_past:
        shape = (batch, spec.num_kv_heads, past, spec.head_size)
        inputs += [torch.randn(shape, generator=generator, dtype=dtype or torch.float32) for _ in spec.past_names()]
    return tuple(inputs)


def accepts_position_ids(hf_model) -> bool:
    import inspect

    base = hf_model.get_base_model() if hasattr(hf_model, "get_base_model") else hf_model  # a peft model takes **kwargs
    return "position_ids" in inspect.signature(base.forward).parameters


def _attention_without_vmap(hf_model) -> None:
    """transformers builds SDPA masks with torch.vmap, which neither exporter can trace; its own
    export integration registers the same attention with a mask built without vmap."""
    try:
        from transformers.integrations.executorch import sdpa_mask_without_vmap
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    except ImportError:  # an architecture or version without the mask interface traces as is
        return
    if getattr(hf_model.config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return
    ALL_MASK_ATTENTION_FUNCTIONS.register("sdpa_without_vmap", sdpa_mask_without_vmap)
    ALL_ATTENTION_FUNCTIONS.register("sdpa_without_vmap", ALL_ATTENTION_FUNCTIONS["sdpa"])
    hf_model.config._attn_implementation = "sdpa_without_vmap"
