"""Metrics of generative models (decoders): perplexity, generation speed, memory, size on disk and
greedy agreement with the input model. Every runtime goes through olive_systems.llm.runners: torch
for the HfModel input, onnxruntime-genai for model-builder folders, a plain onnxruntime KV-cache
loop for every other ONNX decoder.

perplexity {perplexity, loss}
    Token-level negative log-likelihood (natural log) over the data config's windows
    (pre-process type text_generation): one forward per window, no past (an ONNX decoder with KV
    inputs gets zero-length pasts; genai reads every position's logits after append_tokens). Token t
    of a window is scored from the logits at t - 1, from the window's scored_from on (1 unless
    windows overlap). loss = mean NLL over all scored tokens, perplexity = exp(loss).
generation {ttft_ms, prefill_ms, tokens_per_second, total_ms}  (a timing metric: the machine alone)
    Greedy, batch 1, prompt_tokens then new_tokens, EOS masked so that every runtime decodes the
    same count. The prompt is the data config's first input repeated / cut to exactly prompt_tokens
    ids, or fixed ids without a data config. warmup_num runs, then up to repeat_test_num runs, as
    many as budget_s (seconds, warm-up included; at least one timed run) allows; each value is the
    median over them: ttft_ms (generator state set up + prefill + first token), prefill_ms
    (the prompt's forward pass), tokens_per_second ((new_tokens - 1) decode tokens / decode time,
    the first token excluded), total_ms (ttft + decode). prompt_tokens + new_tokens over the model's
    context length is a RecipeError before anything runs.
memory {peak_rss_mb, process_peak_rss_mb}
    See olive_systems.llm.memory: a fresh process loads the model and generates prompt_tokens (32)
    + new_tokens (16); peak_rss_mb is its peak over the same process with only the runtime imported.
size_on_disk {mb, bytes}
    Bytes of the weight files, in MiB (and in bytes): every .onnx file and the external data it reads; an HfModel's
    *.safetensors (else *.bin / *.pt / *.pth).
greedy_agreement {token_match, exact_match}
    The data config's prompts (text_generation, typically use_chat_template) are continued greedily
    for up to new_tokens (32) tokens, stopping after an EOS. The input model's continuations are
    kept as the evaluation artifact "greedy:<data config>:<new_tokens>" and each candidate's are
    compared with them. token_match: reference tokens matched before the first divergence, summed
    over prompts, over all reference tokens (a later match after a divergence does not count: the
    contexts differ from there on). exact_match: the fraction of prompts whose whole continuation,
    EOS included, equals the reference's.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..errors import OliveSystemsError, RecipeError
from ..llm.runners import check_context, decoder_spec, is_decoder
from ..measure import progress_line
from ..models import ModelRef, external_data_files

GENERATIVE_METRICS = ("perplexity", "generation", "memory", "size_on_disk", "greedy_agreement")
DEFAULTS = {
    "generation": {"prompt_tokens": 128, "new_tokens": 128, "warmup_num": 1, "repeat_test_num": 5, "budget_s": 60},
    "memory": {"prompt_tokens": 32, "new_tokens": 16},
    "greedy_agreement": {"new_tokens": 32},
}


class LazyDecoder:
    """Opens the model's decoder runner on first use, once per evaluation."""

    def __init__(self, model: ModelRef, execution_provider: str, intra_op_threads: int | None):
        self.model, self.execution_provider, self.intra_op_threads = model, execution_provider, intra_op_threads
        self._decoder = None

    def __call__(self):
        if self._decoder is None:
            from ..llm.runners import open_decoder

            self._decoder = open_decoder(self.model, self.execution_provider, self.intra_op_threads)
        return self._decoder


def metric_values(metric: dict, model: ModelRef, decoder: LazyDecoder, data: dict, reference: dict | None,
                  artifacts: dict, log=None) -> dict:
    """log: receives a timing metric's progress lines."""
    kind, name = metric["type"], metric["name"]
    config = {**DEFAULTS.get(kind, {}), **(metric.get("metric_config") or {})}
    if kind == "size_on_disk":
        size = weight_bytes(model)
        return {"mb": round(size / 2**20, 4), "bytes": float(size)}
    if not is_decoder(model):
        raise RecipeError(f"metric '{name}' ({kind}) needs a decoder; the model's task is '{model.task}'",
                          "use task text-generation-with-past (or text-generation) for generative metrics")
    data_name = metric.get("data_config")
    batches = data[data_name][1] if data_name else None
    if kind in ("perplexity", "greedy_agreement") and batches is None:
        raise RecipeError(f"metric '{name}' ({kind}) needs a data config", "set data_config to a text_generation data config")
    spec = decoder_spec(model.path)
    if kind == "perplexity":
        from ..data import SCORED_FROM

        scored = [int(np.asarray(feed[SCORED_FROM]).reshape(-1)[0]) if SCORED_FROM in feed else 1
                  for feed in batches.inputs]
        return perplexity(decoder(), _ids(batches, name, data_name), spec.context_length, data_name, scored)
    if kind == "generation":
        prompt_tokens, new_tokens = int(config["prompt_tokens"]), int(config["new_tokens"])
        check_context(spec, prompt_tokens, new_tokens, f"metric '{name}'")
        if new_tokens < 2:
            raise RecipeError(f"metric '{name}': metric_config.new_tokens must be at least 2 (tokens per second "
                              "counts the tokens after the first)", "set new_tokens to 2 or more")
        prompt = prompt_ids(batches, prompt_tokens, spec.vocab_size)
        shown, say = f"{name} {prompt_tokens}+{new_tokens}", log or (lambda line: None)
        return generation(decoder(), prompt, new_tokens, int(config["warmup_num"]), int(config["repeat_test_num"]),
                          float(config["budget_s"]), lambda message: say(progress_line(f"{shown}: {message}")))
    if kind == "memory":
        from ..llm.memory import peak_memory

        prompt_tokens, new_tokens = int(config["prompt_tokens"]), int(config["new_tokens"])
        check_context(spec, prompt_tokens, new_tokens, f"metric '{name}'")
        return peak_memory(model, decoder.execution_provider, prompt_ids(batches, prompt_tokens, spec.vocab_size),
                           new_tokens, decoder.intra_op_threads)
    if kind == "greedy_agreement":
        prompts = _ids(batches, name, data_name)
        new_tokens = int(config["new_tokens"])
        check_context(spec, max(len(p) for p in prompts), new_tokens, f"metric '{name}' (the longest prompt of "
                                                                       f"data config '{data_name}')")
        mine = greedy_continuations(decoder(), prompts, new_tokens)
        key = f"greedy:{data_name}:{new_tokens}"
        artifacts[key] = mine
        if reference is None:  # the input model: it is its own reference
            theirs = mine
        elif key not in reference:
            raise OliveSystemsError(f"metric '{name}': the input model's greedy continuations ({key}) are missing",
                                    "evaluate the input model with the same metrics (clear the cache if it is stale)")
        else:
            theirs = reference[key]
        return agreement(mine, theirs)
    raise RecipeError(f"metric type '{kind}' is not a generative metric", f"use one of {GENERATIVE_METRICS}")


def _ids(batches, metric_name: str, data_name: str) -> list[np.ndarray]:
    if not batches.inputs or "input_ids" not in batches.inputs[0]:
        raise RecipeError(f"metric '{metric_name}': data config '{data_name}' gives no input_ids",
                          "use pre_process_data_config type text_generation")
    return [np.asarray(feed["input_ids"], dtype=np.int64).reshape(-1) for feed in batches.inputs]


def perplexity(decoder, windows: list[np.ndarray], context_length: int, data_name: str | None = None,
               scored_from: list[int] | None = None) -> dict:
    """{"perplexity", "loss"} of a decoder over token windows (see the module doc)."""
    longest = max(len(w) for w in windows)
    if longest > context_length:
        raise RecipeError(f"data config '{data_name}' has windows of {longest} tokens, over the model's context length "
                          f"of {context_length}", f"set pre_process_data_config.max_seq_len to {context_length} or less")
    total, count = 0.0, 0
    for index, ids in enumerate(windows):
        first = scored_from[index] if scored_from else 1
        if len(ids) < 2 or first >= len(ids):
            continue
        logits = decoder.forward_logits(ids).astype(np.float64)[:-1]  # position t predicts token t + 1
        top = logits.max(axis=-1, keepdims=True)
        log_norm = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
        nll = log_norm - logits[np.arange(len(ids) - 1), ids[1:]]
        total += float(nll[first - 1:].sum())
        count += len(ids) - first
    if not count:
        raise RecipeError(f"data config '{data_name}' has no token to score", "give it texts of two tokens or more")
    loss = total / count
    return {"perplexity": float(np.exp(loss)), "loss": float(loss)}


def prompt_ids(batches, prompt_tokens: int, vocab_size: int) -> np.ndarray:
    """Exactly prompt_tokens ids: the data config's first input repeated or cut, else fixed ids."""
    if batches is not None and batches.inputs and "input_ids" in batches.inputs[0]:
        first = np.asarray(batches.inputs[0]["input_ids"], dtype=np.int64).reshape(-1)
        if first.size:
            return np.resize(first, prompt_tokens)
    low = min(1000, vocab_size // 4)  # clear of the special tokens at the start of most vocabularies
    return (low + (np.arange(prompt_tokens, dtype=np.int64) * 7919) % max(vocab_size - low, 1)).astype(np.int64)


def generation(decoder, prompt: np.ndarray, new_tokens: int, warmup_num: int, repeat_test_num: int,
               budget_s: float = math.inf, on_progress=lambda message: None) -> dict:
    started = time.perf_counter()
    for _ in range(warmup_num):
        decoder.generate(prompt, new_tokens)
    runs, last = [], 0.0
    while len(runs) < repeat_test_num:  # the next run starts only if it fits in what is left of the budget
        if runs and time.perf_counter() - started + last > budget_s:
            break
        began = time.perf_counter()
        runs.append(decoder.generate(prompt, new_tokens))
        last = time.perf_counter() - began
        on_progress(f"run {len(runs)} of up to {repeat_test_num}, {time.perf_counter() - started:.1f} s of {budget_s:g} s")
    short = [len(run.tokens) for run in runs if len(run.tokens) != new_tokens]
    if short:
        raise OliveSystemsError(f"generation stopped after {short[0]} of {new_tokens} tokens",
                                "the runner must not stop at EOS when timing")
    median = lambda values: float(np.median(values))  # noqa: E731
    ttft, prefill = median([r.ttft_s for r in runs]), median([r.prefill_s for r in runs])
    decode = median([r.decode_s for r in runs])
    per_second = median([(new_tokens - 1) / r.decode_s if r.decode_s > 0 else 0.0 for r in runs])
    return {"ttft_ms": round(ttft * 1000, 4), "prefill_ms": round(prefill * 1000, 4),
            "tokens_per_second": round(per_second, 4), "total_ms": round((ttft + decode) * 1000, 4)}


def greedy_continuations(decoder, prompts: list[np.ndarray], new_tokens: int) -> np.ndarray:
    """[prompts, new_tokens] int64: each prompt's greedy continuation up to its first EOS, -1 after."""
    out = np.full((len(prompts), new_tokens), -1, dtype=np.int64)
    for index, ids in enumerate(prompts):
        tokens = decoder.generate(ids, new_tokens, stop_at_eos=True).tokens[:new_tokens]
        out[index, :len(tokens)] = tokens
    return out


def agreement(mine: np.ndarray, theirs: np.ndarray) -> dict:
    if mine.shape != theirs.shape:
        raise OliveSystemsError(f"greedy continuations of shape {mine.shape} cannot be compared with the input "
                                f"model's {theirs.shape}", "evaluate the input model and the candidates on the same data")
    matched, total, exact = 0, 0, 0
    for candidate, reference in zip(mine, theirs):
        length = int((reference >= 0).sum())
        same = candidate[:length] == reference[:length]
        prefix = length if same.all() else int(np.argmin(same))
        matched += prefix
        total += length
        exact += int(np.array_equal(candidate, reference))
    return {"token_match": matched / total if total else 1.0, "exact_match": exact / len(mine) if len(mine) else 1.0}


def weight_bytes(model: ModelRef) -> int:
    folder = Path(model.path)
    if model.type == "OnnxModel":
        onnx_files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.onnx") if p.is_file())
        files = set(onnx_files) | set(external_data_files(folder, onnx_files))
        return sum((folder / name).stat().st_size for name in files)
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth"):
        found = [p for p in folder.rglob(pattern) if p.is_file() and "__pycache__" not in p.parts]
        if found:
            return sum(p.stat().st_size for p in found)
    raise OliveSystemsError(f"no weight files in {folder}", "an HfModel folder holds *.safetensors (or *.bin) weights")
