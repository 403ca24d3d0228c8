"""Weight-only quantization to MatMulNBits on real tiny models: an encoder (BERT) and a decoder (Llama),
each algorithm onnxruntime has, the refusals, the aliases and external data."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from olive_systems.data import Batches
from olive_systems.errors import PassError, RecipeError
from olive_systems.models import ModelRef
from olive_systems.passes import get_pass_class, pass_types
from olive_systems.passes.base import Accelerator, PassContext
from olive_systems.passes.weight_only import OnnxWeightOnlyQuantization, _complete_feed
from olive_systems.recipe import load_recipe

from conftest import DATA

ALIASES = {"OnnxBlockWiseRtnQuantization": "rtn", "OnnxHqqQuantization": "hqq", "OnnxGptqQuantization": "gptq",
           "OnnxMatMul4Quantizer": "rtn"}
RNG = np.random.default_rng(0)
LLAMA_VOCAB = 512


def _export(module, args, names, outputs, folder: Path) -> Path:
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(module, args, str(folder / "model.onnx"), input_names=names, output_names=outputs,
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, *outputs]},
                      opset_version=17, dynamo=False)
    return folder


@pytest.fixture(scope="module")
def bert_onnx(tiny_bert, tmp_path_factory) -> Path:
    """conftest's tiny BERT exported to ONNX, its tokenizer and config beside it."""
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(tiny_bert).eval()

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    folder = tmp_path_factory.mktemp("bert_onnx")
    for path in tiny_bert.iterdir():
        if not path.name.endswith((".safetensors", ".bin")):
            shutil.copy2(path, folder / path.name)
    ids = torch.randint(0, 1000, (2, 16))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    return _export(Encoder(), (ids, torch.ones_like(ids), torch.zeros_like(ids)), names, ["last_hidden_state"], folder)


@pytest.fixture(scope="module")
def llama_onnx(tmp_path_factory) -> Path:
    """A random 2-layer Llama (hidden 64, 4 heads, 2 KV heads) exported without KV cache; the causal
    mask is built in the wrapper (the TorchScript exporter cannot trace transformers' vmap masks)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=LLAMA_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaForCausalLM(config).eval()

    class Decoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.llama = model

        def forward(self, input_ids, attention_mask):
            n = input_ids.shape[1]
            keep = torch.ones(n, n, dtype=torch.bool).tril()[None, None] & attention_mask.bool()[:, None, None, :]
            mask = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
            return self.llama(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    folder = tmp_path_factory.mktemp("llama_onnx")
    config.save_pretrained(folder)
    (folder / "genai_config.json").write_text('{"model": {"type": "llama"}}')
    ids = torch.randint(0, LLAMA_VOCAB, (2, 16))
    return _export(Decoder(), (ids, torch.ones_like(ids)), ["input_ids", "attention_mask"], ["logits"], folder)


def bert_feed(batch=2, length=16):
    return {"input_ids": RNG.integers(0, 1000, (batch, length)), "attention_mask": np.ones((batch, length), np.int64),
            "token_type_ids": np.zeros((batch, length), np.int64)}


def llama_feed(batch=2, length=16):
    return {"input_ids": RNG.integers(0, LLAMA_VOCAB, (batch, length)), "attention_mask": np.ones((batch, length), np.int64)}


def quantize(folder: Path, out_dir: Path, pass_type="OnnxWeightOnlyQuantization", data=None, **config):
    cls = get_pass_class(pass_type)
    logs = []
    ctx = PassContext(accelerator=Accelerator("cpu", "CPUExecutionProvider"), log=logs.append,
                      load_data=lambda name, model: Batches(inputs=data[name], targets=None))
    model = ModelRef(type="OnnxModel", path=str(folder), hash="input", attributes={"source": "test"})
    return cls().run(model, cls.resolve_config(config), out_dir, ctx), logs


def run(folder: Path, feed: dict) -> np.ndarray:
    session = ort.InferenceSession(str(Path(folder) / "model.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def cosine(a, b) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def nodes(folder: Path, op_type: str) -> list:
    return [n for n in onnx.load(str(Path(folder) / "model.onnx")).graph.node if n.op_type == op_type]


def attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize("bits, bound", [(8, 0.999), (4, 0.98)])
def test_bert_rtn_gives_matmulnbits_close_to_fp32(bert_onnx, tmp_path, bits, bound):
    out, logs = quantize(bert_onnx, tmp_path / "out", bits=bits, block_size=16, accuracy_level=4)
    quantized = nodes(out.path, "MatMulNBits")
    assert len(quantized) == 12  # 2 layers x (q, k, v, o, up, down)
    assert {(attrs(n)["bits"], attrs(n)["block_size"], attrs(n)["accuracy_level"]) for n in quantized} == {(bits, 16, 4)}
    feed = bert_feed()
    assert cosine(run(out.path, feed), run(bert_onnx, feed)) > bound
    assert out.attributes == {"source": "test", "quantization": "weight_only", "bits": bits, "block_size": 16,
                              "algorithm": "rtn"}
    assert (Path(out.path) / "config.json").is_file() and (Path(out.path) / "tokenizer.json").is_file()
    assert not (Path(out.path) / "model.onnx.data").exists()
    assert "12 MatMul -> MatMulNBits" in logs[0]


def test_bert_gather_embeddings_rtn4(bert_onnx, tmp_path):
    out, _ = quantize(bert_onnx, tmp_path / "out", op_types_to_quantize=["MatMul", "Gather"])
    assert len(nodes(out.path, "GatherBlockQuantized")) == 3  # word, position and token type embeddings
    model = onnx.load(str(Path(out.path) / "model.onnx"))
    assert next(o.version for o in model.opset_import if o.domain == "") == 21  # converted, not restamped
    feed = bert_feed()
    assert cosine(run(out.path, feed), run(bert_onnx, feed)) > 0.95


@pytest.mark.parametrize("algorithm", ["rtn", "hqq", "gptq"])
def test_llama_decoder_each_algorithm_with_excluded_lm_head(llama_onnx, tmp_path, algorithm):
    # the calibration text carries input_ids only: attention_mask is filled in
    data = {"calib": [{"input_ids": llama_feed(2, 16)["input_ids"]} for _ in range(4)]}
    calibration = {"data_config": "calib"} if algorithm == "gptq" else {}
    out, _ = quantize(llama_onnx, tmp_path / "out", algorithm=algorithm, nodes_to_exclude=["*lm_head*"], data=data,
                      **calibration)
    quantized = nodes(out.path, "MatMulNBits")
    assert len(quantized) == 14  # 2 layers x (q, k, v, o, gate, up, down); lm_head excluded
    assert {(attrs(n)["bits"], attrs(n)["block_size"]) for n in quantized} == {(4, 32)}
    assert [n.name for n in nodes(out.path, "MatMul") if "lm_head" in n.name]
    feed = llama_feed(3, 12)
    assert cosine(run(out.path, feed), run(llama_onnx, feed)) > 0.97
    assert (Path(out.path) / "genai_config.json").is_file() and (Path(out.path) / "config.json").is_file()
    assert out.attributes["algorithm"] == algorithm


def test_external_data_in_and_out(llama_onnx, tmp_path):
    folder = tmp_path / "external"
    folder.mkdir()
    shutil.copy2(llama_onnx / "config.json", folder / "config.json")
    onnx.save_model(onnx.load(str(llama_onnx / "model.onnx")), str(folder / "model.onnx"),
                    save_as_external_data=True, location="model.onnx.data")
    os.link(folder / "model.onnx.data", tmp_path / "cached.data")  # as a cache folder's link would be
    out, _ = quantize(folder, tmp_path / "out", bits=8)
    assert (Path(out.path) / "model.onnx.data").is_file()
    model = onnx.load(str(Path(out.path) / "model.onnx"))  # reads the external data (a file of its own)
    assert sum(n.op_type == "MatMulNBits" for n in model.graph.node) == 15
    feed = llama_feed()
    assert cosine(run(out.path, feed), run(llama_onnx, feed)) > 0.999


def test_awq_refused_in_one_line_before_any_work(llama_onnx, tmp_path):
    with pytest.raises(PassError) as info:
        quantize(llama_onnx, tmp_path / "out", algorithm="awq")
    assert "\n" not in str(info.value) and "awq" in str(info.value) and "rtn, gptq and hqq" in str(info.value)
    assert not (tmp_path / "out").exists()


def test_missing_past_becomes_an_empty_kv_cache():
    inputs = onnx.helper.make_graph([], "g", [
        onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"]),
        onnx.helper.make_tensor_value_info("attention_mask", onnx.TensorProto.INT64, ["batch", "total"]),
        onnx.helper.make_tensor_value_info("position_ids", onnx.TensorProto.INT64, ["batch", "sequence"]),
        onnx.helper.make_tensor_value_info("past_key_values.0.key", onnx.TensorProto.FLOAT16, ["batch", 2, "past", 16]),
    ], []).input
    feed = _complete_feed({"input_ids": np.zeros((3, 5), np.int64), "extra": np.zeros(1)}, inputs)
    assert set(feed) == {"input_ids", "attention_mask", "position_ids", "past_key_values.0.key"}
    assert feed["past_key_values.0.key"].shape == (3, 2, 0, 16) and feed["past_key_values.0.key"].dtype == np.float16
    assert feed["attention_mask"].shape == (3, 5) and feed["position_ids"].tolist()[2] == [0, 1, 2, 3, 4]


# ---- recipe validation ----

def recipe(model_folder, pass_type="OnnxWeightOnlyQuantization", **config):
    return {"input_model": {"type": "OnnxModel", "model_path": str(model_folder)},
            "data_configs": [{"name": "calib", "load_dataset_config": {"data_name": "csv", "data_files": str(DATA / "calibration_sentences.csv")},
                              "pre_process_data_config": {"type": "tokenize", "input_cols": ["text"]}}],
            "passes": {"w": {"type": pass_type, "config": config}}}


def rejection(model_folder, pass_type="OnnxWeightOnlyQuantization", **config) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe(model_folder, pass_type, **config))
    return info.value.message


def test_recipe_rejects_what_cannot_work(bert_onnx):
    assert "config: 'data_config' is a required property" in rejection(bert_onnx, algorithm="gptq")
    assert "'data_config' is a required property" in rejection(bert_onnx, "OnnxGptqQuantization")
    assert "passes.w.config.block_size: 48 is not one of [16, 32, 64, 128, 256]" in rejection(bert_onnx, block_size=48)
    awq = rejection(bert_onnx, algorithm="awq")
    assert "\n" not in awq and "config.algorithm" in awq and "rtn, gptq and hqq are available" in awq
    assert "hqq's 8-bit" in rejection(bert_onnx, "OnnxHqqQuantization", bits=8)
    assert "gptq writes MatMulNBits only at 4 bits" in rejection(bert_onnx, algorithm="gptq", data_config="calib", bits=8)
    assert "Gather" in rejection(bert_onnx, bits=8, op_types_to_quantize=["MatMul", "Gather"])
    assert "config.bits: 8 is not one of [4]" in rejection(bert_onnx, "OnnxMatMul4Quantizer", bits=8)


def test_every_alias_is_a_pass_type_with_its_preset(bert_onnx):
    assert set(ALIASES) <= set(pass_types())
    for name, algorithm in ALIASES.items():
        cls = get_pass_class(name)
        assert issubclass(cls, OnnxWeightOnlyQuantization) and cls.resolve_config({})["algorithm"] == algorithm
        config = {"data_config": "calib"} if algorithm == "gptq" else {}
        assert load_recipe(recipe(bert_onnx, name, block_size=64, **config))["passes"]["w"]["type"] == name
    assert load_recipe(recipe(bert_onnx, algorithm="gptq", data_config="calib", bits={"choices": [4]}))


def test_gguf_blocks_are_reused_exactly(tmp_path, tiny_llama):
    """A model read from a GGUF file: its Q4_1 / Q4_0 / Q8_0 blocks become MatMulNBits as they are,
    so the int4 model's logits are the fp32 model's (at fp32 compute, accuracy_level 1)."""
    import itertools
    import shutil

    import gguf
    import numpy as np
    import onnxruntime as ort
    import torch
    from gguf import GGMLQuantizationType as Q
    from transformers import AutoModelForCausalLM

    from olive_systems.llm.gguf_blocks import write_source
    from olive_systems.models import ModelRef, file_sha256
    from olive_systems.passes.base import Accelerator, PassContext
    from olive_systems.passes.conversion import OnnxConversion
    from olive_systems.passes.weight_only import OnnxWeightOnlyQuantization

    folder, gguf_path = tmp_path / "hf", tmp_path / "tiny.gguf"
    shutil.copytree(tiny_llama, folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    writer = gguf.GGUFWriter(str(gguf_path), "llama")
    kinds = itertools.cycle([Q.Q4_1, Q.Q4_0, Q.Q8_0])
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    for (name, module), kind in zip(linears, kinds):
        blocks = gguf.quants.quantize(module.weight.detach().numpy(), kind)
        module.weight.data = torch.from_numpy(gguf.quants.dequantize(blocks, kind))  # as a GGUF reader gives them
        writer.add_tensor(name, blocks, raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model.save_pretrained(folder)
    write_source(folder, gguf_path, file_sha256(gguf_path))

    ctx = PassContext(Accelerator("cpu", "CPUExecutionProvider"), None, print)
    fp32 = OnnxConversion().run(ModelRef(type="HfModel", path=str(folder), hash="h", task="text-generation"),
                                OnnxConversion.resolve_config({}), tmp_path / "fp32", ctx)
    int4 = OnnxWeightOnlyQuantization().run(fp32, OnnxWeightOnlyQuantization.resolve_config(
        {"algorithm": "gguf", "accuracy_level": 1}), tmp_path / "int4", ctx)
    graph = onnx.load(str(Path(int4.path) / "model.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == len(linears)
    assert {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {4, 8}
    ids = np.random.default_rng(0).integers(0, 900, (1, 10)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(10)[None]}
    logits = [ort.InferenceSession(str(Path(m.path) / "model.onnx")).run(["logits"], feed)[0] for m in (fp32, int4)]
    assert np.abs(logits[0] - logits[1]).max() < 1e-3
    (folder / "gguf_source.json").unlink()  # a model not read from a GGUF file
    plain = fp32.relocated(tmp_path / "fp32")
    (Path(plain.path) / "gguf_source.json").unlink()
    with pytest.raises(PassError, match="was not read from one"):
        OnnxWeightOnlyQuantization().run(plain, OnnxWeightOnlyQuantization.resolve_config({"algorithm": "gguf"}),
                                         tmp_path / "refused", ctx)
