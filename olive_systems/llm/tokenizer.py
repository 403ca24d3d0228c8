"""Tokenizer files that onnxruntime-genai reads exactly as transformers does.

onnxruntime-genai (through onnxruntime-extensions) does not run the `tokenizers` pipeline that
tokenizer.json describes; it reads the vocabulary, merges and added tokens from it and guesses the
rest. What decides its behaviour, found by experiment on genai 0.18:

- a decoder with a Replace('▁' -> ' ') step switches it to SentencePiece mode: spaces become '▁'
  and are looked up as SentencePiece byte tokens. transformers writes that decoder for a Llama GGUF
  whose vocabulary is byte-level BPE ('Ġ' for a space), so genai produced ids of -1 and about 3.5
  times as many ids as transformers. The tokenizer_class alone does not change this;
- add_bos_token in tokenizer_config.json (or a post-processor that names the BOS) decides the BOS;
  transformers follows the post-processor only, so the two must agree;
- Split pre-tokenizer steps run one after another, but a Digits step is ignored, and once a Split is
  present ByteLevel's own GPT-2 regex is no longer applied.

`repair_tokenizer_files(folder)` rewrites a folder in place so that both libraries agree, and
`check_genai_tokenizer(folder, texts)` proves it by encoding and decoding each text with both.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

# Files a tokenizer can consist of; a genai model folder carries these beside its ONNX model.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.json", "merges.txt", "tokenizer.model", "chat_template.jinja", "chat_template.json",
)
GENAI_CONFIG = "genai_config.json"
# Classes that make onnxruntime-extensions treat the vocabulary as SentencePiece-style ('▁' for a
# space, <0xNN> byte tokens): wrong for a byte-level BPE vocabulary.
_SPM_CLASSES = {
    "LlamaTokenizer", "LlamaTokenizerFast", "CodeLlamaTokenizer", "CodeLlamaTokenizerFast",
    "GemmaTokenizer", "GemmaTokenizerFast", "T5Tokenizer", "T5TokenizerFast",
}
_BYTE_LEVEL_CLASS = "GPT2Tokenizer"
_SPECIAL_KEYS = ("bos_token", "eos_token", "pad_token", "unk_token")
# ByteLevel's built-in split (GPT-2's), and the split Digits(individual_digits=True) makes.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_DIGIT_REGEX = r"\p{N}"


def _byte_level(component: dict | None) -> bool:
    """Whether a pre-tokenizer (or a Sequence of them) includes the ByteLevel step."""
    if not component:
        return False
    if component.get("type") == "ByteLevel":
        return True
    return any(_byte_level(c) for c in component.get("pretokenizers", []))


def _steps(pre: dict | None) -> list[dict]:
    if not pre:
        return []
    return list(pre.get("pretokenizers", [])) if pre.get("type") == "Sequence" else [pre]


def _describe(pre: dict | None) -> str:
    names = {_DIGIT_REGEX: "(digits)", _GPT2_REGEX: "(GPT-2 regex)"}
    return " + ".join(s.get("type", "?") + (names.get(s["pattern"].get("Regex"), "(regex)") if "pattern" in s else "")
                      for s in _steps(pre)) or "none"


def _is_digit_split(step: dict) -> bool:
    return (step.get("type") == "Digits" and step.get("individual_digits")) or step == _split(_DIGIT_REGEX)


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


def _genai_pre_tokenizer(pre: dict | None, split_digits: bool | None) -> dict | None:
    """The byte-level pre-tokenizer, with digits split or not as asked, written in steps that both
    libraries run alike.

    genai runs Split steps one after another, but ignores a Digits step, and once a Split is present
    it no longer applies ByteLevel's own GPT-2 regex. So Digits(individual) becomes
    Split(\\p{N}), and a ByteLevel(use_regex) after a Split becomes Split(GPT-2 regex) + ByteLevel
    without regex: the same pieces in transformers, and now in genai too."""
    steps = _steps(pre)
    has_digits = any(_is_digit_split(s) for s in steps)
    if split_digits and not has_digits:
        steps.insert(0, _split(_DIGIT_REGEX))
    elif split_digits is False and has_digits:
        steps = [s for s in steps if not _is_digit_split(s)]
        if len(steps) == 2 and steps[0] == _split(_GPT2_REGEX) and steps[1].get("type") == "ByteLevel":
            steps = [{**steps[1], "use_regex": True}]
    out: list[dict] = []
    for step in steps:
        if step.get("type") == "Digits" and step.get("individual_digits"):
            step = _split(_DIGIT_REGEX)
        if step.get("type") == "ByteLevel" and step.get("use_regex", True) and any(s.get("type") == "Split" for s in out):
            out.append(_split(_GPT2_REGEX))
            step = {**step, "use_regex": False}
        out.append(step)
    if not out:
        return pre
    return out[0] if len(out) == 1 else {"type": "Sequence", "pretokenizers": out}


def _is_byte_level_bpe(tokenizer: dict) -> bool:
    return tokenizer.get("model", {}).get("type") == "BPE" and _byte_level(tokenizer.get("pre_tokenizer"))


def _token_content(value) -> str | None:
    if isinstance(value, dict):  # an AddedToken as transformers serializes it
        return value.get("content")
    return value


def _id_to_token(tokenizer: dict) -> dict[int, str]:
    table = {i: t for t, i in tokenizer.get("model", {}).get("vocab", {}).items()} if isinstance(
        tokenizer.get("model", {}).get("vocab"), dict) else {}
    table.update({t["id"]: t["content"] for t in tokenizer.get("added_tokens", [])})
    return table


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _config_special_ids(folder: Path) -> dict[str, list[int]]:
    """bos/eos/pad ids the model's generation_config.json (else config.json) declares."""
    found: dict[str, list[int]] = {}
    for name in ("config.json", "generation_config.json"):  # the latter wins
        config = _read_json(folder / name)
        for key in ("bos", "eos", "pad"):
            value = config.get(f"{key}_token_id")
            if isinstance(value, int):
                found[key] = [value]
            elif isinstance(value, list) and value and all(isinstance(v, int) for v in value):
                found[key] = value
    return found


def repair_tokenizer_files(folder: Path, *, bos_token: str | None = None, eos_token: str | None = None,
                           pad_token: str | None = None, unk_token: str | None = None,
                           add_bos_token: bool | None = None, split_digits: bool | None = None) -> list[str]:
    """Make a Hugging Face folder's tokenizer files self-consistent, in place; returns what changed.

    For a byte-level BPE tokenizer.json: the class becomes GPT2Tokenizer when it named a
    SentencePiece-style one; the model loses byte_fallback; the decoder is plain ByteLevel; the
    post-processor adds a BOS exactly when add_bos_token says so (default: as it did before), and
    tokenizer_config.json says the same, since genai reads that flag and transformers the
    post-processor; clean_up_tokenization_spaces is off (byte-level decoding is exact).
    The pre-tokenizer is written in steps genai runs too (see _genai_pre_tokenizer); split_digits=True
    makes it isolate every digit first, as SmolLM and StarCoder vocabularies were trained, and
    split_digits=False stops it (default: as it was).

    For any tokenizer: special tokens given here are set; otherwise an eos/bos the tokenizer has that
    is not among the ids config.json/generation_config.json declare is replaced by the declared one,
    and a missing pad is taken from them. The chat template is copied into tokenizer_config.json
    (genai reads it there) when only chat_template.jinja has it. A folder without tokenizer.json is
    left alone. Running it twice changes nothing the second time.
    """
    folder = Path(folder)
    tokenizer_path, config_path = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not tokenizer_path.is_file():
        return []
    tokenizer = _read_json(tokenizer_path)
    config = _read_json(config_path)
    changes: list[str] = []
    original_tokenizer, original_config = json.dumps(tokenizer, sort_keys=True), json.dumps(config, sort_keys=True)
    id_to_token = _id_to_token(tokenizer)
    token_to_id = {t: i for i, t in id_to_token.items()}

    # ---- special tokens ----
    wanted = {"bos_token": bos_token, "eos_token": eos_token, "pad_token": pad_token, "unk_token": unk_token}
    declared = _config_special_ids(folder)
    for key in ("bos", "eos"):
        current = token_to_id.get(_token_content(config.get(f"{key}_token")))
        ids = declared.get(key)
        if wanted[f"{key}_token"] is None and ids and current not in ids and ids[0] in id_to_token:
            wanted[f"{key}_token"] = id_to_token[ids[0]]
    if wanted["pad_token"] is None and config.get("pad_token") is None and declared.get("pad"):
        if declared["pad"][0] in id_to_token:
            wanted["pad_token"] = id_to_token[declared["pad"][0]]
    for key, token in wanted.items():
        if token is None or _token_content(config.get(key)) == token:
            continue
        if token not in token_to_id:
            raise ValueError(f"{folder}: {key} {token!r} is not in the tokenizer's vocabulary")
        changes.append(f"{key}: {_token_content(config.get(key))!r} -> {token!r}")
        config[key] = token
        config.pop(f"{key}_id", None)  # stale ids transformers may have written beside the token
    special_map_path = folder / "special_tokens_map.json"
    if special_map_path.is_file():
        special_map = _read_json(special_map_path)
        for key in _SPECIAL_KEYS:
            if config.get(key) is not None and _token_content(special_map.get(key)) != _token_content(config[key]):
                special_map[key] = _token_content(config[key])
        _write_json(special_map_path, special_map)

    # ---- byte-level BPE ----
    if _is_byte_level_bpe(tokenizer):
        if config.get("tokenizer_class") in _SPM_CLASSES or not config.get("tokenizer_class"):
            changes.append(f"tokenizer_class: {config.get('tokenizer_class')!r} -> {_BYTE_LEVEL_CLASS!r} (byte-level BPE)")
            config["tokenizer_class"] = _BYTE_LEVEL_CLASS
        for key in ("legacy", "add_prefix_space", "model_type", "use_default_system_prompt", "spaces_between_special_tokens"):
            config.pop(key, None)  # SentencePiece options; meaningless (or misleading) here
        model = tokenizer["model"]
        if model.get("byte_fallback"):
            model["byte_fallback"] = False
            changes.append("model.byte_fallback: True -> False (every byte has a token)")
        model["fuse_unk"] = False
        normalizer = tokenizer.get("normalizer")
        if normalizer and normalizer.get("type") == "Sequence" and not normalizer.get("normalizers"):
            tokenizer["normalizer"] = None
        new_pre = _genai_pre_tokenizer(tokenizer.get("pre_tokenizer"), split_digits)
        if new_pre != tokenizer.get("pre_tokenizer"):
            changes.append(f"pre_tokenizer: {_describe(tokenizer.get('pre_tokenizer'))} -> {_describe(new_pre)}")
            tokenizer["pre_tokenizer"] = new_pre
        decoder = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        if tokenizer.get("decoder") != decoder:
            changes.append(f"decoder: {(tokenizer.get('decoder') or {}).get('type')} -> ByteLevel")
            tokenizer["decoder"] = decoder
        post = tokenizer.get("post_processor") or {}
        adds_bos = post.get("type") == "TemplateProcessing" and any(
            "SpecialToken" in step for step in post.get("single", [])[:1])
        if add_bos_token is None:
            add_bos_token = adds_bos
        bos = _token_content(config.get("bos_token"))
        if add_bos_token:
            if bos is None:
                raise ValueError(f"{folder}: add_bos_token without a bos_token")
            bos_step = {"SpecialToken": {"id": bos, "type_id": 0}}
            new_post = {
                "type": "TemplateProcessing",
                "single": [bos_step, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [bos_step, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                "special_tokens": {bos: {"id": bos, "ids": [token_to_id[bos]], "tokens": [bos]}},
            }
        else:
            new_post = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True}
        if post != new_post:
            changes.append(f"post_processor: {'adds' if adds_bos else 'no'} BOS -> {'adds' if add_bos_token else 'no'} BOS")
            tokenizer["post_processor"] = new_post
        config["add_bos_token"] = bool(add_bos_token)
        config["add_eos_token"] = False
        config["clean_up_tokenization_spaces"] = False

    # ---- chat template ----
    jinja = folder / "chat_template.jinja"
    if jinja.is_file() and not config.get("chat_template"):
        config["chat_template"] = jinja.read_text(encoding="utf-8")
        changes.append("chat_template copied into tokenizer_config.json")

    if json.dumps(tokenizer, sort_keys=True) != original_tokenizer:
        _write_json(tokenizer_path, tokenizer)
    if json.dumps(config, sort_keys=True) != original_config:
        _write_json(config_path, config)
    return changes


# ---- onnxruntime-genai's view of a tokenizer ----

def _genai_config_for(folder: Path) -> dict:
    """The least genai_config.json onnxruntime-genai needs to build a tokenizer (no ONNX model)."""
    config = _read_json(folder / "config.json")
    model: dict = {"context_length": int(config.get("max_position_embeddings") or 4096)}
    for key in ("bos_token_id", "eos_token_id", "pad_token_id", "vocab_size"):
        if config.get(key) is not None:
            model[key] = config[key]
    return {"model": model}


def genai_tokenizer(folder: Path):
    """An onnxruntime_genai.Tokenizer for a folder's tokenizer files, without loading any model.

    og.Tokenizer(og.Config(dir)) needs only a genai_config.json with model.context_length in `dir`.
    A genai model folder has one; for a plain Hugging Face folder the tokenizer files are linked into
    a temp folder beside a minimal genai_config.json (the tokenizer is in memory once built)."""
    import onnxruntime_genai as og

    folder = Path(folder)
    if (folder / GENAI_CONFIG).is_file():
        return og.Tokenizer(og.Config(str(folder)))
    from ..models import link_or_copy

    with tempfile.TemporaryDirectory(prefix="genai-tokenizer-") as tmp:
        for name in TOKENIZER_FILES:
            if (folder / name).is_file():
                link_or_copy(folder / name, Path(tmp) / name)
        (Path(tmp) / GENAI_CONFIG).write_text(json.dumps(_genai_config_for(folder)))
        return og.Tokenizer(og.Config(tmp))


def genai_token_ids(folder: Path, text: str) -> list[int]:
    return [int(i) for i in genai_tokenizer(folder).encode(text)]


def check_genai_tokenizer(folder: Path, texts: list[str], chats: list[list[dict]] | None = None) -> list[dict]:
    """Encode and decode every text with onnxruntime-genai and with transformers' AutoTokenizer, and
    render every chat (a list of {"role", "content"} messages) with both chat templates.

    Returns one dict per disagreement: {"text", "kind": "encode"|"decode"|"chat_template",
    "transformers", "genai"} (ids for encode, strings otherwise); an empty list means both libraries
    read the folder alike."""
    import numpy as np
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(str(folder))
    og_tokenizer = genai_tokenizer(folder)
    mismatches = []
    for text in texts:
        hf_ids = list(hf(text)["input_ids"])
        og_ids = [int(i) for i in og_tokenizer.encode(text)]
        if hf_ids != og_ids:
            mismatches.append({"text": text, "kind": "encode", "transformers": hf_ids, "genai": og_ids})
            continue
        hf_text = hf.decode(hf_ids, skip_special_tokens=True)  # genai's decode always drops them
        og_text = og_tokenizer.decode(np.asarray(hf_ids, dtype=np.int32))
        if hf_text != og_text:
            mismatches.append({"text": text, "kind": "decode", "transformers": hf_text, "genai": og_text})
    for messages in chats or []:
        hf_text = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        og_text = og_tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
        if hf_text != og_text:
            mismatches.append({"text": json.dumps(messages), "kind": "chat_template",
                               "transformers": hf_text, "genai": og_text})
    return mismatches


def copy_tokenizer_files(src: Path, dst: Path) -> list[str]:
    """Copy the tokenizer files of src into dst; returns their names."""
    copied = []
    for name in TOKENIZER_FILES:
        if (Path(src) / name).is_file():
            Path(dst).mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(src) / name, Path(dst) / name)
            copied.append(name)
    return copied
