"""Adapters: extract_adapters / convert_adapters round trips weight by weight, the ExtractAdapters
pass (generate_adapter) serving two adapters of one base on one session, switched per request and
matched against each adapter's merged peft model, and the refusals made before any work."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import olive_systems
from olive_systems.errors import RecipeError
from olive_systems.llm.adapters import (ADAPTER_FORMATS, dequantize_int4, load_adapter_weights, name_lora_weights,
                                        read_peft_adapter)

TARGETS = ["q_proj", "v_proj", "down_proj"]
RANK = 4
IDS = np.array([[5, 17, 42, 99, 7, 310, 12, 8]], dtype=np.int64)
# float32 end to end; the ONNX graph adds x@A@B to x@W where peft's merged model adds B@A to W first
LOGITS_ATOL = 1e-4


# ---- fixtures: a tiny base, two adapters of it, the base exported with the first one ----

def make_adapter(base: Path, folder: Path, seed: int, alpha: int) -> Path:
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model

    model = transformers.AutoModelForCausalLM.from_pretrained(base)
    torch.manual_seed(seed)  # init_lora_weights=False: B is random too, so each adapter changes the outputs
    config = LoraConfig(r=RANK, lora_alpha=alpha, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def export_with_adapter(base: Path, adapter: Path, work: Path) -> Path:
    """The base with its adapter applied unmerged (the LoRA pass's HfModel layout: adapter/ in the
    model folder, attributes adapter_path), exported by OnnxConversion, LoRA weights named."""
    from olive_systems.models import ModelRef
    from olive_systems.passes.base import Accelerator, PassContext
    from olive_systems.passes.conversion import OnnxConversion

    folder = work / "hf_with_adapter"
    shutil.copytree(base, folder)
    shutil.copytree(adapter, folder / "adapter")
    ref = ModelRef(type="HfModel", path=str(folder), hash="0" * 64, task="text-generation-with-past",
                   attributes={"adapter_path": "adapter"})
    out = work / "exported"
    OnnxConversion().run(ref, OnnxConversion.resolve_config({}), out,
                         PassContext(Accelerator("cpu", "CPUExecutionProvider"), None, lambda _: None))
    name_lora_weights(out / "model.onnx", adapter)  # idempotent: a no-op once OnnxConversion names them itself
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("adapters")


@pytest.fixture(scope="module")
def adapters(tiny_llama, work) -> tuple[Path, Path]:
    return (make_adapter(tiny_llama, work / "adapter_one", seed=1, alpha=8),
            make_adapter(tiny_llama, work / "adapter_two", seed=2, alpha=16))


@pytest.fixture(scope="module")
def exported(tiny_llama, adapters, work) -> Path:
    return export_with_adapter(tiny_llama, adapters[0], work)


@pytest.fixture(scope="module")
def merged_logits(tiny_llama, adapters) -> dict:
    """Each adapter's merged peft model's logits on IDS, and the base's."""
    import torch
    import transformers
    from peft import PeftModel

    out = {}
    with torch.no_grad():
        for name, adapter in (("one", adapters[0]), ("two", adapters[1]), ("base", None)):
            model = transformers.AutoModelForCausalLM.from_pretrained(tiny_llama)
            if adapter is not None:
                model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
            out[name] = model.eval()(torch.from_numpy(IDS)).logits[0].numpy()
    return out


def served_expectation(adapter: Path) -> dict:
    """What every weights file must hold: A.T and (scaling * B).T under peft's names."""
    import json

    from safetensors.numpy import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    scaling = config["lora_alpha"] / config["r"]
    expected = {}
    for name, value in load_file(str(adapter / "adapter_model.safetensors")).items():
        expected[name] = value.T * (scaling if ".lora_B." in name else 1.0)
    return expected


def feed_for(session) -> dict:
    feed = {"input_ids": IDS, "attention_mask": np.ones_like(IDS)}
    for spec in session.get_inputs():
        if spec.name.startswith("past_key_values"):
            feed[spec.name] = np.zeros((1, spec.shape[1], 0, spec.shape[3]), dtype=np.float32)
    if "position_ids" in {s.name for s in session.get_inputs()}:
        feed["position_ids"] = np.arange(IDS.shape[1], dtype=np.int64)[None]
    return feed


def ort_session(folder: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])


# ---- extraction and conversion: weight by weight ----

@pytest.mark.parametrize("fmt", list(ADAPTER_FORMATS))
def test_extract_adapters_round_trip_weight_by_weight(fmt, adapters, tmp_path):
    written = olive_systems.extract_adapters(str(adapters[0]), fmt, str(tmp_path / fmt))
    assert written == tmp_path / fmt / f"adapter_weights{ADAPTER_FORMATS[fmt]}"
    assert (tmp_path / fmt / "adapter_config.json").is_file()
    loaded, expected = load_adapter_weights(written), served_expectation(adapters[0])
    assert sorted(loaded) == sorted(expected) and len(loaded) == 2 * 2 * len(TARGETS)  # 2 layers, A and B
    for name, value in expected.items():
        assert loaded[name].dtype == np.float32 and loaded[name].shape == value.shape, name
        np.testing.assert_allclose(loaded[name], value, rtol=1e-6, atol=0, err_msg=name)


def test_extract_adapters_from_a_model_folder_holding_its_adapter_in_float16(adapters, exported, tmp_path):
    model_folder = exported.parent / "hf_with_adapter"  # the base's files and adapter/
    written = olive_systems.extract_adapters(str(model_folder), "safetensors", str(tmp_path), dtype="float16")
    loaded, expected = load_adapter_weights(written), served_expectation(adapters[0])
    for name, value in expected.items():
        assert loaded[name].dtype == np.float16
        np.testing.assert_array_equal(loaded[name], value.astype(np.float16), err_msg=name)


@pytest.mark.parametrize("mode,block", [("symmetric", 16), ("asymmetric", 32)])
def test_convert_adapters_int4_round_trip_and_matmulnbits_agree(mode, block, adapters, tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper

    written = olive_systems.convert_adapters(str(adapters[0]), "numpy", output_path=str(tmp_path / "int4"),
                                             quantize_int4=True, int4_block_size=block, int4_quantization_mode=mode)
    assert written.name == "int4.npz"
    packed, expected = load_adapter_weights(written), served_expectation(adapters[0])
    assert (any(n.endswith(".zero_points") for n in packed)) == (mode == "asymmetric")
    restored = dequantize_int4(packed, {name: value.shape[0] for name, value in expected.items()}, block)
    for name, value in expected.items():
        k, n = value.shape
        blocks = -(-k // block)
        scales = packed[name + ".scales"].reshape(n, blocks)
        bound = np.repeat(scales, block, axis=1)[:, :k].T / 2 + 1e-6  # round to nearest: half a step per value
        assert restored[name].shape == value.shape
        assert np.all(np.abs(restored[name] - value) <= bound), name
    # onnxruntime's MatMulNBits reads the stored layout as dequantize_int4 does
    name = next(iter(expected))
    k, n = expected[name].shape
    inputs = [name + suffix for suffix in (".quant", ".scales", ".zero_points") if name + suffix in packed]
    node = helper.make_node("MatMulNBits", ["x", *inputs], ["y"], domain="com.microsoft", K=k, N=n, bits=4, block_size=block)
    specs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])] + [
        helper.make_tensor_value_info(i, TensorProto.FLOAT if packed[i].dtype == np.float32 else TensorProto.UINT8,
                                      list(packed[i].shape)) for i in inputs]
    graph = helper.make_graph([node], "g", specs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
                              ir_version=9)
    x = np.random.default_rng(0).standard_normal((1, k)).astype(np.float32)
    y = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x, **{i: packed[i] for i in inputs}})[0]
    np.testing.assert_allclose(y, x @ restored[name], atol=1e-5)


# ---- serving: one base, two adapters, one session ----

def test_generate_adapter_serves_two_adapters_switched_per_request(exported, adapters, merged_logits, work):
    import onnxruntime as ort
    import yaml

    out = work / "generated"
    output = olive_systems.generate_adapter(str(exported), output_path=str(out), cache_dir=str(work / "cache"),
                                            save_config_file=True)
    assert not output.failures
    best = output.get_best_candidate()
    assert best.from_pass() == "ExtractAdapters"
    folder = Path(best.model_path).parent
    assert {"model.onnx", "adapter_weights.onnx_adapter", "genai_config.json"} <= {p.name for p in folder.iterdir()}
    recipe = yaml.safe_load((out / "generate_adapter_config.yaml").read_text())
    assert recipe["passes"]["extract_adapters"]["type"] == "ExtractAdapters"

    second = olive_systems.convert_adapters(str(adapters[1]), output_path=str(work / "two.onnx_adapter"))
    session = ort_session(folder)  # one session, the adapters loaded once each
    loaded = {"one": ort.LoraAdapter(), "two": ort.LoraAdapter()}
    loaded["one"].Load(str(folder / "adapter_weights.onnx_adapter"))
    loaded["two"].Load(str(second))
    feed = feed_for(session)
    for request in ["one", "two", "one", "base", "two", "two", "one"]:  # switched per request
        options = ort.RunOptions()
        if request != "base":
            options.add_active_adapter(loaded[request])
        logits = session.run(["logits"], feed, run_options=options)[0][0]
        np.testing.assert_allclose(logits, merged_logits[request], atol=LOGITS_ATOL, rtol=0, err_msg=request)
        assert np.abs(logits - merged_logits["base"]).max() > 100 * LOGITS_ATOL or request == "base"

    # onnxruntime-genai: og.Adapters on one og.Model, the active adapter set per generator
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    genai_adapters = og.Adapters(model)
    genai_adapters.load(str(folder / "adapter_weights.onnx_adapter"), "one")
    genai_adapters.load(str(second), "two")
    for request in ["two", "one", "base", "two"]:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=IDS.shape[1] + 1)
        generator = og.Generator(model, params)
        if request != "base":
            generator.set_active_adapter(genai_adapters, request)
        generator.append_tokens(IDS[0].astype(np.int32))
        logits = np.asarray(generator.get_output("logits")).reshape(-1, merged_logits["base"].shape[-1])
        np.testing.assert_allclose(logits, merged_logits[request], atol=LOGITS_ATOL, rtol=0, err_msg=f"genai {request}")

    # the plain decoder runner sees no extra inputs: without an adapter the folder runs as the base
    from olive_systems.llm.runners import open_decoder

    np.testing.assert_allclose(open_decoder(folder, kind="ort").forward_logits(IDS[0]), merged_logits["base"],
                               atol=LOGITS_ATOL)


def test_int4_adapters_are_served_by_matmulnbits(exported, adapters, work):
    """generate_adapter with quantize_int4: the second adapter converted to int4 with the same block
    size and mode runs on the int4 graph exactly as its dequantized float weights do on the float graph."""
    import onnxruntime as ort

    out = olive_systems.generate_adapter(str(exported), output_path=str(work / "int4"), cache_dir=str(work / "cache"),
                                         quantize_int4=True, int4_block_size=16, int4_quantization_mode="asymmetric",
                                         dtype="float16")
    int4_folder = Path(out.get_best_candidate().model_path).parent
    float_folder = Path(olive_systems.generate_adapter(str(exported), output_path=str(work / "generated_fixed"),
                                                       cache_dir=str(work / "cache"), dynamic_lora_r=False)
                        .get_best_candidate().model_path).parent
    second = olive_systems.convert_adapters(str(adapters[1]), "onnx_adapter", output_path=str(work / "two_int4"),
                                            dtype="float16", quantize_int4=True, int4_block_size=16,
                                            int4_quantization_mode="asymmetric")
    packed = load_adapter_weights(second)
    expected = served_expectation(adapters[1])
    dequantized = dequantize_int4(packed, {n: v.shape[0] for n, v in expected.items()}, 16)
    int4_session, float_session = ort_session(int4_folder), ort_session(float_folder)
    adapter = ort.LoraAdapter()
    adapter.Load(str(second))
    options = ort.RunOptions()
    options.add_active_adapter(adapter)
    feed = feed_for(int4_session)
    served = int4_session.run(["logits"], feed, run_options=options)[0]
    reference = float_session.run(["logits"], {**feed, **dequantized})[0]
    np.testing.assert_allclose(served, reference, atol=1e-4)


# ---- refusals: one line each, before any work ----

def test_a_folder_that_is_not_a_peft_adapter_is_refused_naming_what_is_missing(tiny_llama, adapters, tmp_path):
    with pytest.raises(RecipeError) as error:
        olive_systems.convert_adapters(str(tiny_llama), output_path=str(tmp_path / "out"))
    assert "adapter_config.json" in error.value.message and "\n" not in error.value.message
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    shutil.copy(adapters[0] / "adapter_config.json", config_only)
    with pytest.raises(RecipeError) as error:
        olive_systems.extract_adapters(str(config_only), "numpy", str(tmp_path / "out"))
    assert "adapter_model.safetensors" in error.value.message
    dora = tmp_path / "dora"
    shutil.copytree(adapters[0], dora)
    text = (dora / "adapter_config.json").read_text().replace('"use_dora": false', '"use_dora": true')
    (dora / "adapter_config.json").write_text(text)
    with pytest.raises(RecipeError) as error:
        read_peft_adapter(dora)
    assert "DoRA" in error.value.message and "lora" in error.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config_only", "dora"]  # no output written


@pytest.mark.parametrize("arguments,named", [({"int4_block_size": 48, "quantize_int4": True}, "int4_block_size"),
                                             ({"int4_block_size": 48}, "power of two"),
                                             ({"int4_block_size": 64}, "quantize_int4"),
                                             ({"adapter_type": "dora"}, "DoRA"),
                                             ({"adapter_type": "loha"}, "LoHa"),
                                             ({"quantize_int4": True, "dynamic_lora_r": True}, "dynamic_lora_r")])
def test_generate_adapter_refuses_before_any_work(arguments, named, exported, tmp_path):
    with pytest.raises(RecipeError) as error:
        olive_systems.generate_adapter(str(exported), output_path=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"),
                                       **arguments)
    assert named in error.value.message and "\n" not in error.value.message and error.value.fix
    assert list(tmp_path.iterdir()) == []


def test_convert_adapters_refuses_a_bad_block_size_and_writes_nothing(adapters, tmp_path):
    with pytest.raises(RecipeError) as error:
        olive_systems.convert_adapters(str(adapters[0]), output_path=str(tmp_path / "w"), quantize_int4=True,
                                       int4_block_size=24)
    assert "power of two" in error.value.message and "\n" not in error.value.message
    assert list(tmp_path.iterdir()) == []


def test_generate_adapter_refuses_an_onnx_model_without_lora(tiny_llama, tmp_path, work):
    plain = work / "plain"
    if not plain.exists():
        from olive_systems.models import ModelRef
        from olive_systems.passes.base import Accelerator, PassContext
        from olive_systems.passes.conversion import OnnxConversion

        ref = ModelRef(type="HfModel", path=str(tiny_llama), hash="0" * 64, task="text-generation-with-past")
        OnnxConversion().run(ref, OnnxConversion.resolve_config({}), plain,
                             PassContext(Accelerator("cpu", "CPUExecutionProvider"), None, lambda _: None))
    with pytest.raises(RecipeError) as error:
        olive_systems.generate_adapter(str(plain), output_path=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert "no LoRA weights" in error.value.message
    assert list(tmp_path.iterdir()) == []


def test_the_adapter_functions_are_public_and_on_the_command_line(capsys):
    from olive_systems.cli import build_parser, main
    from olive_systems.workflows import UTILITIES, WORKFLOWS

    for name in ("generate_adapter", "convert_adapters", "extract_adapters"):
        assert name in olive_systems.__all__ and callable(getattr(olive_systems, name))
    assert WORKFLOWS["generate_adapter"] is olive_systems.generate_adapter
    assert UTILITIES["convert_adapters"] is olive_systems.convert_adapters
    with pytest.raises(SystemExit) as exit_info:
        main(["generate-adapter", "--help"])
    assert exit_info.value.code == 0 and "--int4_block_size" in capsys.readouterr().out
    commands = build_parser()._subparsers._group_actions[0].choices
    if "convert_adapters" not in commands:
        pytest.skip("cli.py does not list the utility functions yet")
    with pytest.raises(SystemExit) as exit_info:
        main(["convert_adapters", "--help"])
    assert exit_info.value.code == 0 and "--quantize_int4" in capsys.readouterr().out


@pytest.mark.parametrize("runtime", ["genai", "ort"])
def test_the_packaged_sample_switches_adapters_per_request(runtime, adapters, work, tmp_path):
    """The sample template, rendered as packaging would, run on the served folder with a second adapter."""
    import subprocess
    import sys
    from importlib import resources

    folder = work / "generated" / "extract_adapters"
    if not (folder / "model.onnx").is_file():
        pytest.skip("runs after test_generate_adapter_serves_two_adapters_switched_per_request")
    template = resources.files("olive_systems.packaging").joinpath("sample_code/python/switch_adapters.py.tmpl")
    script = tmp_path / "switch_adapters.py"
    script.write_text(template.read_text().replace("__CANDIDATE__", "unused"))
    second = olive_systems.convert_adapters(str(adapters[1]), output_path=str(tmp_path / "two.onnx_adapter"))
    result = subprocess.run([sys.executable, str(script), "--model", str(folder), "--adapter", f"two={second}",
                             "--runtime", runtime, "--max-new-tokens", "4", "a short question"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = [line for line in result.stdout.splitlines() if line.startswith("[")]
    assert [line.split("]")[0][1:] for line in lines] == ["exported", "two", "base"]


def test_generate_adapter_refuses_a_model_that_serves_adapters_already(work, tmp_path):
    folder = work / "generated" / "extract_adapters"
    if not (folder / "model.onnx").is_file():
        pytest.skip("runs after test_generate_adapter_serves_two_adapters_switched_per_request")
    with pytest.raises(RecipeError) as error:
        olive_systems.generate_adapter(str(folder), output_path=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    assert "already" in error.value.message and list(tmp_path.iterdir()) == []
