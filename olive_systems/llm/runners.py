"""Decoder runners: one small interface over the three ways olive-systems runs a generative model.

    decoder = open_decoder(model, "CPUExecutionProvider", intra_op_threads=None)
    logits = decoder.forward_logits(ids)                  # [n, vocab] float32, one forward over ids
    result = decoder.generate(prompt_ids, new_tokens)     # Generation(tokens, ttft_s, decode_s, prefill_s)
    tokens, ttft_s, decode_s, prefill_s = result

Which runtime runs a model (`decoder_kind`):

* ``torch``: an HfModel (the reference), in transformers on the CPU.
* ``genai``: a folder with genai_config.json and a KV cache: the model builder's output
  (GroupQueryAttention, a past/present buffer shared at max length) and OnnxConversion's decoder
  exports with what later passes make of them. Through og.Model / og.Generator, as users run them.
* ``ort``: any other ONNX decoder (kind='ort' forces it on the folders above), and a SplitModel's
  parts as one chain: a plain onnxruntime loop that feeds the presents back as the pasts; a decoder
  exported without a KV cache (task text-generation) is run over the whole sequence at every step.

Every runtime decodes greedily at batch 1 and, unless asked to stop at EOS, never stops early: the
EOS ids are masked out of the argmax, exactly as onnxruntime-genai's min_length does, so every
runtime decodes the same count of tokens and the same tokens. Timings (perf_counter, seconds):

* ``prefill_s``: the forward pass over the prompt alone;
* ``ttft_s``: from the start of generate() (state set up: feeds, genai's generator and its KV
  buffers) until the first new token id is known: prefill and the first argmax included;
* ``decode_s``: the rest: the remaining new_tokens - 1 tokens, one forward pass each (the last
  token is never fed back, in any runtime).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import OliveSystemsError, RecipeError
from ..models import ModelRef, canonical_task, is_generative
from .genai_folder import GENAI_CONFIG
from .spec import DecoderSpec

_KV_NAME = re.compile(r"\.(\d+)\.(key|value)$")
_NON_KV_INPUTS = ("input_ids", "attention_mask", "position_ids")
# ONNX Runtime execution provider -> onnxruntime-genai's provider name (CPU: no provider at all)
GENAI_PROVIDERS = {"CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml", "WebGpuExecutionProvider": "webgpu",
                   "QNNExecutionProvider": "qnn", "OpenVINOExecutionProvider": "OpenVINO",
                   "NvTensorRTRTXExecutionProvider": "NvTensorRtRtx"}


class Generation(NamedTuple):
    tokens: list[int]  # the new tokens only (fewer than asked only when stop_at_eos met an EOS)
    ttft_s: float
    decode_s: float
    prefill_s: float


# ---- what a model folder says about itself ----

def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def decoder_spec(folder: Path | str) -> DecoderSpec:
    """The decoder's shape and context from config.json; a genai folder's genai_config.json has the
    last word on the context length and EOS ids (it is what onnxruntime-genai enforces)."""
    folder = Path(folder)
    config = _read_json(folder / "config.json")
    genai = _read_json(folder / GENAI_CONFIG).get("model", {})
    if not config and not genai:
        raise RecipeError(f"{folder} has neither config.json nor {GENAI_CONFIG}: not a decoder folder",
                          "keep the Hugging Face config.json (or genai_config.json) beside the model")
    if not config:  # an ONNX-only folder: genai_config holds all a decoder spec needs
        decoder = genai.get("decoder", {})
        config = {"model_type": genai.get("type"), "num_hidden_layers": decoder.get("num_hidden_layers"),
                  "num_attention_heads": decoder.get("num_attention_heads"),
                  "num_key_value_heads": decoder.get("num_key_value_heads"), "head_dim": decoder.get("head_size"),
                  "hidden_size": decoder.get("hidden_size"), "vocab_size": genai.get("vocab_size"),
                  "max_position_embeddings": genai.get("context_length"), "bos_token_id": genai.get("bos_token_id"),
                  "eos_token_id": genai.get("eos_token_id"), "pad_token_id": genai.get("pad_token_id")}
    spec = DecoderSpec.from_config(config)
    eos = genai.get("eos_token_id", _read_json(folder / "generation_config.json").get("eos_token_id"))
    if eos is not None:
        spec = replace(spec, eos_token_id=list(eos) if isinstance(eos, (list, tuple)) else [eos])
    if genai.get("context_length"):
        spec = replace(spec, context_length=int(genai["context_length"]))
    return spec


def is_builder_folder(model: ModelRef) -> bool:
    """A folder only onnxruntime-genai runs: the model builder's (its attributes say so, or its graph
    has GroupQueryAttention, or its genai_config shares the past and present buffer)."""
    if model.type != "OnnxModel":
        return False
    if (model.attributes or {}).get("model_builder"):
        return True
    folder = Path(model.path)
    genai = _read_json(folder / GENAI_CONFIG)
    if not genai:
        return False
    if genai.get("search", {}).get("past_present_share_buffer"):
        return True
    import onnx

    filename = genai.get("model", {}).get("decoder", {}).get("filename", "model.onnx")
    try:
        proto = onnx.load(str(folder / filename), load_external_data=False)
    except Exception:
        return False
    return any(node.op_type == "GroupQueryAttention" for node in proto.graph.node)


def decoder_kind(model: ModelRef) -> str:
    """'torch', 'genai' or 'ort': which runner open_decoder() gives this model (see the module doc)."""
    if model.type == "HfModel":
        return "torch"
    if model.type != "OnnxModel":
        raise OliveSystemsError(f"cannot run a model of type {model.type} as a decoder", "use an HfModel or OnnxModel")
    from ..passes.split import is_split

    if is_split(model):  # its parts run as one chain in onnxruntime; onnxruntime-genai loads one model file
        return "ort"
    if is_builder_folder(model):
        return "genai"
    # A decoder export with its KV cache and genai_config.json runs as its users run it (the packaged
    # sample, any genai app): through onnxruntime-genai. Without a cache, the plain loop recomputes.
    decoder = _read_json(Path(model.path) / GENAI_CONFIG).get("model", {}).get("decoder", {})
    return "genai" if decoder.get("inputs", {}).get("past_key_names") else "ort"


def is_decoder(model: ModelRef) -> bool:
    return is_generative(model.task) or (model.type == "OnnxModel" and (Path(model.path) / GENAI_CONFIG).is_file())


def as_model_ref(model: ModelRef | str | Path, task: str = "text-generation-with-past") -> ModelRef:
    """A ModelRef for a folder given by path (a sample, a benchmark): ONNX if it holds model.onnx or
    a split model's parts."""
    if isinstance(model, ModelRef):
        return model
    from ..passes.split import SPLIT_MANIFEST

    folder = Path(model)
    kind = "OnnxModel" if (folder / "model.onnx").is_file() or (folder / SPLIT_MANIFEST).is_file() else "HfModel"
    return ModelRef(type=kind, path=str(folder), hash="0" * 64, task=task)


def check_context(spec: DecoderSpec, prompt_tokens: int, new_tokens: int, what: str) -> None:
    """RecipeError when a prompt and its continuation do not fit the model's context."""
    if prompt_tokens + new_tokens > spec.context_length:
        raise RecipeError(f"{what}: metric_config.prompt_tokens ({prompt_tokens}) + metric_config.new_tokens "
                          f"({new_tokens}) = {prompt_tokens + new_tokens} tokens exceed the model's context length "
                          f"of {spec.context_length}",
                          f"lower metric_config.prompt_tokens / new_tokens to fit {spec.context_length} tokens together")


def import_runtime(kind: str) -> None:
    """Import the libraries a runner of this kind needs (and nothing of a model): the memory
    metric's baseline."""
    import onnxruntime  # noqa: F401  (every kind: the package imports it for sessions and runtimes)

    if kind == "genai":
        import onnxruntime_genai  # noqa: F401
    elif kind == "torch":
        import torch  # noqa: F401
        import transformers  # noqa: F401


def open_decoder(model: ModelRef | str | Path, execution_provider: str = "CPUExecutionProvider",
                 intra_op_threads: int | None = None, kind: str | None = None):
    """The runner for a decoder model (or folder). kind forces 'torch', 'ort' or 'genai' (an
    OnnxConversion folder runs under either of the last two)."""
    model = as_model_ref(model)
    kind = kind or decoder_kind(model)
    runners = {"torch": TorchDecoder, "ort": OrtDecoder, "genai": GenaiDecoder}
    if kind not in runners:
        raise OliveSystemsError(f"no decoder runner '{kind}'", f"use one of {sorted(runners)}")
    return runners[kind](model, execution_provider, intra_op_threads)


def _greedy(logits: np.ndarray, banned: list[int]) -> int:
    """argmax of one position's logits, with the banned (EOS) ids masked out."""
    if banned:
        logits = logits.astype(np.float32, copy=True)
        logits[banned] = -np.inf
    return int(np.argmax(logits))


class _Decoder:
    kind = ""

    def __init__(self, model: ModelRef):
        self.model = model
        self.spec = decoder_spec(model.path)

    def _banned(self, stop_at_eos: bool) -> list[int]:
        return [] if stop_at_eos else [i for i in self.spec.eos_token_id if 0 <= i < self.spec.vocab_size]

    def _check(self, prompt_ids, new_tokens: int) -> np.ndarray:
        ids = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        if ids.size == 0 or new_tokens < 1:
            raise OliveSystemsError("generate() needs a prompt of at least one token and new_tokens >= 1")
        check_context(self.spec, ids.size, new_tokens, f"decoder {self.model.path}")
        return ids

    def forward_logits(self, ids) -> np.ndarray:
        raise NotImplementedError

    def generate(self, prompt_ids, new_tokens: int, stop_at_eos: bool = False) -> Generation:
        raise NotImplementedError

    def close(self) -> None:
        pass


class TorchDecoder(_Decoder):
    """The HfModel in transformers, on the CPU, its own KV cache fed back token by token.
    intra_op_threads is not applied: torch's thread count is process-wide and a local job shares
    the orchestrator's process (the reference runs with torch's default, as ModelRunner does)."""

    kind = "torch"

    def __init__(self, model: ModelRef, execution_provider: str, intra_op_threads: int | None = None):
        super().__init__(model)
        from ..models import load_hf_model

        if canonical_task(model.task) not in ("text-generation", "text-generation-with-past"):
            model = replace(model, task="text-generation-with-past")
        self.torch_model = load_hf_model(model)

    def forward_logits(self, ids) -> np.ndarray:
        import torch

        ids = torch.from_numpy(np.asarray(ids, dtype=np.int64).reshape(1, -1))
        with torch.inference_mode():
            return self.torch_model(input_ids=ids, use_cache=False).logits[0].float().numpy()

    def generate(self, prompt_ids, new_tokens: int, stop_at_eos: bool = False) -> Generation:
        import torch

        ids = self._check(prompt_ids, new_tokens)
        banned, eos = self._banned(stop_at_eos), set(self.spec.eos_token_id)
        with torch.inference_mode():
            start = time.perf_counter()
            feed = torch.from_numpy(ids.reshape(1, -1))
            outputs = self.torch_model(input_ids=feed, use_cache=True)
            prefill = time.perf_counter() - start
            token = _greedy(outputs.logits[0, -1].float().numpy(), banned)
            first = time.perf_counter()
            tokens = [token]
            past = outputs.past_key_values
            while len(tokens) < new_tokens and not (stop_at_eos and token in eos):
                outputs = self.torch_model(input_ids=torch.tensor([[token]]), past_key_values=past, use_cache=True)
                past = outputs.past_key_values
                token = _greedy(outputs.logits[0, -1].float().numpy(), banned)
                tokens.append(token)
            end = time.perf_counter()
        return Generation(tokens, first - start, end - first, prefill)


_ORT_TYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
              "tensor(float16)": np.float16, "tensor(double)": np.float64}


class OrtDecoder(_Decoder):
    """A plain onnxruntime loop: prefill with zero-length pasts, then one token a step with the
    presents fed back as the pasts. A decoder without KV inputs is run over the whole sequence."""

    kind = "ort"

    def __init__(self, model: ModelRef, execution_provider: str, intra_op_threads: int | None = None):
        super().__init__(model)
        from ..passes.split import open_session  # a split model's parts run as one chain

        self.session = open_session(model, execution_provider, intra_op_threads)
        inputs = {arg.name: arg for arg in self.session.get_inputs()}
        outputs = [arg.name for arg in self.session.get_outputs()]
        if "input_ids" not in inputs:
            raise OliveSystemsError(f"{model.onnx_path} has no input_ids input: not a decoder",
                                    "evaluate generative metrics on a decoder export (task text-generation-with-past)")
        self.types = {name: _ORT_TYPES.get(arg.type, np.float32) for name, arg in inputs.items()}
        self.logits_name = "logits" if "logits" in outputs else outputs[0]
        presents = {}
        for name in outputs:
            found = _KV_NAME.search(name)
            if found and name != self.logits_name:
                presents[(int(found.group(1)), found.group(2))] = name
        self.kv = []  # (past input name, present output name, empty past of the declared shape and type)
        for name, arg in inputs.items():
            found = _KV_NAME.search(name)
            if name in _NON_KV_INPUTS or not found:
                continue
            key = (int(found.group(1)), found.group(2))
            if key not in presents:
                raise OliveSystemsError(f"{model.onnx_path}: past input {name} has no present output",
                                        "export the decoder with matching present.N.key/value outputs")
            dims = list(arg.shape)
            heads = dims[1] if len(dims) > 1 and isinstance(dims[1], int) else self.spec.num_kv_heads
            size = dims[3] if len(dims) > 3 and isinstance(dims[3], int) else self.spec.head_size
            self.kv.append((name, presents[key], np.zeros((1, heads, 0, size), dtype=self.types[name])))
        unknown = sorted(set(inputs) - set(_NON_KV_INPUTS) - {name for name, _, _ in self.kv})
        if unknown:
            raise OliveSystemsError(f"{model.onnx_path} has inputs the decoder loop does not know: {unknown}",
                                    "export with OnnxConversion (task text-generation-with-past)")
        self.output_names = [self.logits_name] + [present for _, present, _ in self.kv]

    def _run(self, ids: np.ndarray, past_length: int, pasts: list[np.ndarray] | None):
        """One forward over ids (1-D) after past_length cached tokens -> (logits [n, vocab], presents)."""
        n = ids.size
        feed = {"input_ids": ids.reshape(1, n).astype(self.types["input_ids"])}
        if "attention_mask" in self.types:
            feed["attention_mask"] = np.ones((1, past_length + n), dtype=self.types["attention_mask"])
        if "position_ids" in self.types:
            feed["position_ids"] = np.arange(past_length, past_length + n).reshape(1, n).astype(self.types["position_ids"])
        for (name, _, _), value in zip(self.kv, pasts or [empty for _, _, empty in self.kv]):
            feed[name] = value
        results = self.session.run(self.output_names, feed)
        return results[0][0], results[1:]

    def forward_logits(self, ids) -> np.ndarray:
        return self._run(np.asarray(ids, dtype=np.int64).reshape(-1), 0, None)[0].astype(np.float32)

    def generate(self, prompt_ids, new_tokens: int, stop_at_eos: bool = False) -> Generation:
        ids = self._check(prompt_ids, new_tokens)
        banned, eos = self._banned(stop_at_eos), set(self.spec.eos_token_id)
        start = time.perf_counter()
        logits, pasts = self._run(ids, 0, None)
        prefill = time.perf_counter() - start
        token = _greedy(logits[-1], banned)
        first = time.perf_counter()
        tokens = [token]
        sequence = list(ids)
        while len(tokens) < new_tokens and not (stop_at_eos and token in eos):
            sequence.append(token)
            if self.kv:
                logits, pasts = self._run(np.array([token], dtype=np.int64), len(sequence) - 1, pasts)
            else:  # no KV cache: the whole sequence again
                logits, _ = self._run(np.asarray(sequence, dtype=np.int64), 0, None)
            token = _greedy(logits[-1], banned)
            tokens.append(token)
        end = time.perf_counter()
        return Generation(tokens, first - start, end - first, prefill)


class GenaiDecoder(_Decoder):
    """onnxruntime-genai: og.Model over the folder's genai_config.json, with the accelerator's
    provider and the model's session options (threads) laid over it."""

    kind = "genai"

    def __init__(self, model: ModelRef, execution_provider: str, intra_op_threads: int | None = None):
        super().__init__(model)
        from ..passes.split import is_split

        if is_split(model):
            raise OliveSystemsError(f"{model.path} is a split model: onnxruntime-genai loads one model file, not a "
                                    "chain of parts", "run it with the plain onnxruntime loop (kind 'ort')")
        try:
            import onnxruntime_genai as og
        except ImportError:
            raise OliveSystemsError("onnxruntime-genai is not installed where the evaluation runs",
                                    "pip install onnxruntime-genai (it runs the model builder's folders)") from None
        self.og = og
        if not (Path(model.path) / GENAI_CONFIG).is_file():
            raise OliveSystemsError(f"{model.path} has no {GENAI_CONFIG}", "run genai folders only (ModelBuilder's output)")
        config = og.Config(str(model.path))
        config.clear_providers()
        settings = model.inference_settings or {}
        if execution_provider != "CPUExecutionProvider":
            if execution_provider not in GENAI_PROVIDERS:
                raise OliveSystemsError(f"onnxruntime-genai has no provider for {execution_provider}",
                                        f"use one of CPUExecutionProvider, {', '.join(sorted(GENAI_PROVIDERS))}")
            provider = GENAI_PROVIDERS[execution_provider]
            config.append_provider(provider)
            for entry in settings.get("execution_provider", []):
                if isinstance(entry, (list, tuple)) and entry[0] == execution_provider and len(entry) > 1:
                    for key, value in (entry[1] or {}).items():
                        config.set_provider_option(provider, str(key), str(value))
        options = {}
        session = settings.get("session_options") or {}
        for key in ("intra_op_num_threads", "inter_op_num_threads"):
            if key in session:
                options[key] = int(session[key])
        if intra_op_threads:
            options["intra_op_num_threads"] = int(intra_op_threads)
        if options:
            config.overlay(json.dumps({"model": {"decoder": {"session_options": options}}}))
        self.genai_model = og.Model(config)
        self.full_logits = None  # learnt on the first forward_logits: does append_tokens give every position?
        # A folder serving adapters (ExtractAdapters) is scored with its own adapter active, not as the bare base.
        adapter_file = ((model.attributes or {}).get("adapters") or {}).get("file")
        self.adapters = None
        if adapter_file:
            if not adapter_file.endswith(".onnx_adapter") or not (Path(model.path) / adapter_file).is_file():
                raise OliveSystemsError(f"{model.path}: its adapter {adapter_file} is not an .onnx_adapter file in the "
                                        "folder: onnxruntime-genai cannot load it, and the base alone would be scored",
                                        "extract the adapters with adapter_format onnx_adapter")
            self.adapters = og.Adapters(self.genai_model)
            self.adapters.load(str(Path(model.path) / adapter_file), "own")

    def _generator(self, max_length: int, min_length: int = 0):
        params = self.og.GeneratorParams(self.genai_model)
        params.set_search_options(max_length=max_length, min_length=min_length, do_sample=False, top_k=1,
                                  num_beams=1, num_return_sequences=1)
        generator = self.og.Generator(self.genai_model, params)
        if self.adapters is not None:
            generator.set_active_adapter(self.adapters, "own")
        return generator

    def forward_logits(self, ids) -> np.ndarray:
        """Every position's logits from one append_tokens (get_output("logits") holds them all for a
        decoder whose logits output keeps the sequence axis). A model whose graph keeps the last
        position only is fed a token at a time instead (n forwards, the same numbers)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        check_context(self.spec, ids.size, 0, f"decoder {self.model.path}")
        if self.full_logits is not False:
            generator = self._generator(ids.size)
            generator.append_tokens(ids.astype(np.int32))
            logits = np.asarray(generator.get_output("logits"))
            logits = logits.reshape(-1, logits.shape[-1])
            if logits.shape[0] == ids.size:
                self.full_logits = True
                return logits.astype(np.float32)
            self.full_logits = False
        generator = self._generator(ids.size)
        rows = []
        for token in ids:
            generator.append_tokens(np.array([token], dtype=np.int32))
            rows.append(np.asarray(generator.get_logits()).reshape(-1).astype(np.float32))
        return np.stack(rows)

    def generate(self, prompt_ids, new_tokens: int, stop_at_eos: bool = False) -> Generation:
        ids = self._check(prompt_ids, new_tokens)
        total = ids.size + new_tokens
        start = time.perf_counter()
        generator = self._generator(total, 0 if stop_at_eos else total)
        began = time.perf_counter()
        generator.append_tokens(ids.astype(np.int32))
        prefill = time.perf_counter() - began
        generator.generate_next_token()  # the prompt's logits are there: this only picks the token
        first = time.perf_counter()
        produced = 1
        while produced < new_tokens and not generator.is_done():
            generator.generate_next_token()
            produced += 1
        end = time.perf_counter()
        tokens = [int(t) for t in generator.get_sequence(0)][ids.size:]
        return Generation(tokens, first - start, end - first, prefill)
