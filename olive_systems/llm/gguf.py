"""GGUF checkpoints as ordinary Hugging Face folders.

transformers reads a GGUF file (`from_pretrained(folder, gguf_file=NAME)`) and dequantizes it to a
float32 model; `gguf_to_hf_folder` saves that as a standalone folder (config.json,
model.safetensors, generation_config.json, tokenizer files with the chat template) that every later
pass loads like any Hugging Face model. The tokenizer transformers builds from a GGUF is not what
the model was trained with, and onnxruntime-genai reads it differently again; it is rebuilt from the
GGUF's own metadata (olive_systems.llm.tokenizer) and checked against genai before the folder counts.

`materialize_gguf` caches the folder under `cache_root/gguf/<sha256 of the file>/`, built in a temp
folder and renamed into place, so a run killed at any moment leaves no half-written entry.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

from ..errors import OliveSystemsError, RecipeError
from ..cache.local import process_alive
from ..models import file_sha256, publish_folder
from .gguf_blocks import write_source
from .tokenizer import check_genai_tokenizer, repair_tokenizer_files

GGUF_MAGIC = b"GGUF"
# llama.cpp's names (tokenizer.ggml.pre) for byte-level vocabularies whose pre-tokenizer isolates
# every digit before GPT-2's split, and for those that use GPT-2's split alone.
_DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r", "exaone", "minerva"}
_GPT2_SPLIT_PRE = {"gpt2", "default", "mpt", "olmo", "jais"}
# Texts the written tokenizer must encode and decode identically in transformers and genai.
SELF_CHECK_TEXTS = (
    "The quick brown fox jumps over the lazy dog.",
    "It's 2024: prices rose  12.5% (from $3,999 to $4,499)!\n\n  1. first\n\t2. second",
    "def f(x):\n    return x  * 2  # twice\r\n",
    "Café, naïve, Straße, 東京, 😀 and ...   trailing spaces   ",
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
)


def _require_gguf(gguf_path: Path) -> Path:
    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise RecipeError(f"GGUF file '{gguf_path}' does not exist", "correct the path to the .gguf file")
    with open(gguf_path, "rb") as f:
        if f.read(4) != GGUF_MAGIC:
            raise RecipeError(f"'{gguf_path}' is not a GGUF file (it does not start with 'GGUF')",
                              "give the path of a .gguf checkpoint")
    return gguf_path.resolve()


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def gguf_scalars(gguf_path: Path) -> dict:
    """The scalar metadata of a GGUF file (strings and numbers; arrays skipped), read from its header
    alone: milliseconds, where the full reader parses every token of the vocabulary (seconds)."""
    import struct

    def read(f, fmt):
        return struct.unpack(fmt, f.read(struct.calcsize(fmt)))[0]

    def text(f):
        return f.read(read(f, "<Q")).decode("utf-8", "replace")

    found = {}
    with open(_require_gguf(gguf_path), "rb") as f:
        f.read(4 + 4 + 8)  # magic, version, tensor count
        for _ in range(read(f, "<Q")):
            key, kind = text(f), read(f, "<I")
            if kind in _SCALARS:
                found[key] = read(f, _SCALARS[kind])
            elif kind == 8:
                found[key] = text(f)
            else:  # an array: element type, count, elements
                element, count = read(f, "<I"), read(f, "<Q")
                if element == 8:
                    for _ in range(count):
                        f.seek(read(f, "<Q"), 1)
                else:
                    f.seek(count * struct.calcsize(_SCALARS[element]), 1)
    return found


def gguf_metadata(gguf_path: Path, prefix: str = "") -> dict:
    """The GGUF file's scalar and short metadata fields (token lists and merges left out)."""
    from gguf import GGUFReader

    reader = GGUFReader(str(_require_gguf(gguf_path)))
    found = {}
    for key, field in reader.fields.items():
        if not key.startswith(prefix) or len(field.data) > 64:
            continue
        try:
            found[key] = field.contents()
        except Exception:  # a field type this gguf version cannot render: not one we need
            continue
    return found


def _token_hints(meta: dict, id_to_token: Callable[[int], str]) -> dict:
    """repair_tokenizer_files arguments from the GGUF's tokenizer metadata."""
    hints: dict = {}
    for key, name in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("pad_token", "padding_token_id"), ("unk_token", "unknown_token_id")):
        value = meta.get(f"tokenizer.ggml.{name}")
        if isinstance(value, int):
            hints[key] = id_to_token(value)
    if isinstance(meta.get("tokenizer.ggml.add_bos_token"), bool):
        hints["add_bos_token"] = meta["tokenizer.ggml.add_bos_token"]
    if meta.get("tokenizer.ggml.model") == "gpt2":
        pre = meta.get("tokenizer.ggml.pre")
        if pre in _DIGIT_SPLIT_PRE:
            hints["split_digits"] = True
        elif pre in _GPT2_SPLIT_PRE:
            hints["split_digits"] = False
    return hints


def write_gguf_tokenizer(gguf_path: Path, out_dir: Path, log: Callable[[str], None] = print) -> list[str]:
    """Write the GGUF's tokenizer (tokenizer.json, tokenizer_config.json with the chat template,
    special_tokens_map.json, chat_template.jinja) into out_dir, repaired after the GGUF's metadata,
    and check that onnxruntime-genai reads it as transformers does. No weights are loaded.
    Returns the repairs made."""
    from transformers import AutoTokenizer

    gguf_path = _require_gguf(gguf_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tokenizer.save_pretrained(str(out_dir))
    meta = gguf_metadata(gguf_path, "tokenizer.ggml.")
    hints = _token_hints(meta, tokenizer.convert_ids_to_tokens)
    pre = meta.get("tokenizer.ggml.pre")
    if meta.get("tokenizer.ggml.model") == "gpt2" and "split_digits" not in hints:
        log(f"GGUF pre-tokenizer '{pre}' is not one olive-systems knows; kept transformers' (GPT-2 split)")
    changes = repair_tokenizer_files(out_dir, **hints)
    for change in changes:
        log(f"tokenizer: {change}")
    try:
        import onnxruntime_genai  # noqa: F401  (the llm extra)
    except ImportError:
        log("onnxruntime-genai is not installed: the tokenizer was not checked against it")
        return changes
    mismatches = check_genai_tokenizer(out_dir, list(SELF_CHECK_TEXTS), [[{"role": "user", "content": "Hi there!"}]])
    if mismatches:
        first = mismatches[0]
        raise OliveSystemsError(
            f"{gguf_path.name}: onnxruntime-genai reads the tokenizer differently from transformers "
            f"({len(mismatches)} of {len(SELF_CHECK_TEXTS)} texts; first {first['kind']} of {first['text']!r}: "
            f"transformers {first['transformers']!r}, genai {first['genai']!r})",
            f"the GGUF's tokenizer (tokenizer.ggml.model '{meta.get('tokenizer.ggml.model')}', pre '{pre}') "
            "needs a repair olive_systems.llm.tokenizer does not make yet",
        )
    return changes


def gguf_to_hf_folder(gguf_path: Path, out_dir: Path, log: Callable[[str], None] = print) -> None:
    """Dequantize a GGUF checkpoint into a complete, standalone Hugging Face folder in out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    gguf_path = _require_gguf(gguf_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    log(f"loading {gguf_path.name} (dequantizing to float32)")
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name,
                                                 dtype=torch.float32)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    if not (out_dir / "generation_config.json").is_file():
        GenerationConfig.from_model_config(model.config).save_pretrained(str(out_dir))
    del model
    write_gguf_tokenizer(gguf_path, out_dir, log)
    log(f"{gguf_path.name} -> {out_dir} in {time.monotonic() - started:.0f} s")


# Part of the cache folder's name (and so of the input model's hash): raise it when what this module
# writes changes (the tokenizer repair, the weights), so no folder written by older code is reused.
READER_VERSION = 2


def _open_permissions(folder: Path) -> None:
    """mkdtemp (and the safetensors writer) make owner-only entries; a cache folder is read by
    other users too (a container's), so give it the permissions the umask gives any new file."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(folder, 0o777 & ~umask)
    for path in folder.rglob("*"):
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def materialize_gguf(gguf_path: Path, cache_root: Path, log: Callable[[str], None] = print) -> Path:
    """The Hugging Face folder of a GGUF file: cache_root/gguf/<sha256 of the file>-r<READER_VERSION>/, built once.

    It is built in cache_root/tmp/<pid>-gguf-* and renamed into place in one step: a folder under
    gguf/ is always complete. Temp folders of killed runs are removed here (and by the cache sweep)."""
    gguf_path = _require_gguf(gguf_path)
    cache_root = Path(cache_root).resolve()
    digest = file_sha256(gguf_path)
    final = cache_root / "gguf" / f"{digest}-r{READER_VERSION}"
    if final.is_dir():
        log(f"{gguf_path.name}: Hugging Face folder from the cache ({final})")
        return final
    tmp_root = cache_root / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    for stale in tmp_root.glob("*-gguf-*"):
        pid = stale.name.split("-", 1)[0]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-gguf-", dir=tmp_root))
    try:
        gguf_to_hf_folder(gguf_path, tmp, log)
        write_source(tmp, gguf_path, digest)  # lets weight-only quantization reuse the file's own blocks
        _open_permissions(tmp)
        publish_folder(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final
