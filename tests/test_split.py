"""SplitModel and generate_cost_model: an ONNX model cut into parts that run in a chain and give the
whole model's outputs, by num_splits or by a cost model CSV; the generate-cost-model command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_recipe
from olive_systems import run
from olive_systems.cli import main as cli
from olive_systems.errors import PassError, RecipeError
from olive_systems.passes.split import SPLIT_MANIFEST, SplitModel, _module_of, read_cost_model
from olive_systems.recipe import load_recipe


def _sessions(folder: Path):
    import onnxruntime as ort

    names = json.loads((folder / SPLIT_MANIFEST).read_text())["parts"]
    return [ort.InferenceSession(str(folder / name), providers=["CPUExecutionProvider"]) for name in names]


def _run_chain(folder: Path, feed: dict) -> list[np.ndarray]:
    """The parts one after another, each fed exactly the previous part's outputs (the first: the model's inputs)."""
    sessions = _sessions(folder)
    values, previous_outputs = feed, None
    for session in sessions:
        inputs = [arg.name for arg in session.get_inputs()]
        if previous_outputs is not None:
            assert inputs == previous_outputs  # a strict chain: outputs of part i are the inputs of part i+1
        values = dict(zip([a.name for a in session.get_outputs()], session.run(None, {n: values[n] for n in inputs})))
        previous_outputs = [arg.name for arg in session.get_outputs()]
    return list(values.values())


def _bert_feed(rng, batch: int = 2, length: int = 16) -> dict:
    return {"input_ids": rng.integers(0, 1000, (batch, length), dtype=np.int64),
            "attention_mask": np.ones((batch, length), dtype=np.int64),
            "token_type_ids": np.zeros((batch, length), dtype=np.int64)}


def _whole(model_path: str, feed: dict) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = {arg.name for arg in session.get_inputs()}
    return session.run(None, {k: v for k, v in feed.items() if k in names})


def test_tiny_bert_split_into_2_and_3_parts_matches_the_whole_model(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"] = {"conversion": {"type": "OnnxConversion", "config": {"target_opset": 17}},
                        "split2": {"type": "SplitModel", "config": {"num_splits": 2}},
                        "split3": {"type": "SplitModel", "config": {"num_splits": 3}}}
    recipe["pass_flows"] = [["conversion"], ["conversion", "split2"], ["conversion", "split3"]]
    metrics = recipe["evaluators"]["common"]["metrics"]
    recipe["evaluators"]["common"]["metrics"] = [m for m in metrics if m["type"] in ("fidelity", "latency")]
    output = run(recipe)

    assert not output.failures, output.failures
    models = {m.model_id: m for m in output.get_output_models()}
    whole = models["conversion"].model_path
    feed = _bert_feed(np.random.default_rng(0))
    expected = _whole(whole, feed)
    for model_id, parts in (("conversion-split2", 2), ("conversion-split3", 3)):
        folder = Path(models[model_id].model_path)
        assert folder.is_dir() and not (folder / "model.onnx").exists()
        assert sorted(p.name for p in folder.glob("*.onnx")) == [f"part_{i}.onnx" for i in range(parts)]
        assert (folder / "tokenizer.json").is_file()  # loadable as is: the tokenizer travels with the parts
        manifest = json.loads((folder / SPLIT_MANIFEST).read_text())
        assert manifest["parts"] == [f"part_{i}.onnx" for i in range(parts)]
        got = _run_chain(folder, {k: v for k, v in feed.items() if k in manifest["inputs"]})
        assert len(got) == len(expected)
        for mine, theirs in zip(got, expected):
            np.testing.assert_allclose(mine, theirs, atol=1e-5)
        # evaluation ran the chain: the split model scores what the whole model does
        assert models[model_id].metrics_value["fidelity-cosine_mean"] == pytest.approx(1.0, abs=1e-6)
        assert models[model_id].metrics_value["latency-p50"] > 0


def _mlp_onnx(folder: Path) -> Path:
    """A 4-layer MLP exported with TorchScript (node names carry the module paths)."""
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4)).eval()
    folder.mkdir(parents=True)
    torch.onnx.export(model, (torch.zeros(1, 16),), str(folder / "model.onnx"), input_names=["x"], output_names=["y"],
                      dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
    return folder


def _split(model_folder: Path, out: Path, config: dict) -> Path:
    from olive_systems.models import ModelRef, folder_sha256
    from olive_systems.passes.base import Accelerator, PassContext

    ref = ModelRef(type="OnnxModel", path=str(model_folder), hash=folder_sha256(model_folder))
    ctx = PassContext(Accelerator("cpu", "CPUExecutionProvider"), load_data=None, log=lambda message: None)
    result = SplitModel().run(ref, SplitModel.resolve_config(config), out, ctx)
    return Path(result.path)


@pytest.mark.parametrize("parts", [2, 3])
def test_mlp_split_chain_equals_whole(tmp_path, parts):
    folder = _mlp_onnx(tmp_path / "mlp")
    split = _split(folder, tmp_path / "split", {"num_splits": parts})
    x = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    assert len(_sessions(split)) == parts
    np.testing.assert_allclose(_run_chain(split, {"x": x})[0], _whole(str(folder / "model.onnx"), {"x": x})[0], atol=1e-5)


def test_split_by_cost_model_from_the_cli(tiny_bert, tmp_path):
    """generate-cost-model on the HF model, then the ONNX export split into parts of at most `memory` bytes."""
    csv_path = tmp_path / "costs" / "bert.csv"
    assert cli(["generate-cost-model", "--model-name-or-path", str(tiny_bert), "--task", "feature-extraction",
                "--output-path", str(csv_path)]) == 0
    rows = read_cost_model(csv_path)
    sizes = {module: num_bytes for module, _, num_bytes in rows}
    biggest, total = max(sizes.values()), sum(sizes.values())
    memory = biggest + (total - biggest) // 2  # the embeddings and about half of the rest: at least 2 parts

    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe.update(evaluators={}, pass_flows=[["conversion"], ["conversion", "split"]])
    recipe["passes"] = {"conversion": {"type": "OnnxConversion", "config": {"target_opset": 17}},
                        "split": {"type": "SplitModel", "config": {"cost_model": str(csv_path), "memory": memory}}}
    output = run(recipe)
    assert not output.failures, output.failures
    models = {m.model_id: m for m in output.get_output_models()}
    folder = Path(models["conversion-split"].model_path)
    sessions = _sessions(folder)
    assert len(sessions) >= 2
    import onnx

    for name in json.loads((folder / SPLIT_MANIFEST).read_text())["parts"]:  # each part within the budget
        modules = set()
        for node in onnx.load(str(folder / name)).graph.node:
            module = _module_of(node.name)
            modules |= {m for m in sizes if module == m or module.endswith("." + m)}
        assert sum(sizes[m] for m in modules) <= memory
    feed = _bert_feed(np.random.default_rng(1))
    for mine, theirs in zip(_run_chain(folder, feed), _whole(models["conversion"].model_path, feed)):
        np.testing.assert_allclose(mine, theirs, atol=1e-5)

    # the cache key follows the CSV's content, not its path or its time stamp
    csv_path.write_bytes(csv_path.read_bytes())
    second = run(dict(recipe, engine={**recipe["engine"], "output_dir": str(tmp_path / "o2")}))
    assert all(step["cached"] for step in second.steps), second.steps
    csv_path.write_text(csv_path.read_text().replace("\r\n", "\n") + "extra.module,1,4\n")
    changed = run(dict(recipe, engine={**recipe["engine"], "output_dir": str(tmp_path / "o2b")}))
    assert [step["cached"] for step in changed.steps] == [True, False]


def test_mlp_split_by_cost_model_packs_layers_up_to_memory(tmp_path):
    """Memory for the big middle layer plus the small last one: parts [layer 0], [layer 1], [layers 2 and 3]."""
    folder = _mlp_onnx(tmp_path / "mlp")
    script = tmp_path / "mlp_script.py"
    script.write_text("import torch\n\n\ndef _model_loader(path):\n    return torch.nn.Sequential(torch.nn.Linear(16, 64), "
                      "torch.nn.ReLU(), torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64), "
                      "torch.nn.ReLU(), torch.nn.Linear(64, 4))\n")
    csv_path = tmp_path / "mlp.csv"
    assert cli(["generate-cost-model", "--model-script", str(script), "--output-path", str(csv_path)]) == 0
    sizes = [num_bytes for _, _, num_bytes in read_cost_model(csv_path)]
    assert sizes == [(16 * 64 + 64) * 4, (64 * 64 + 64) * 4, (64 * 64 + 64) * 4, (64 * 4 + 4) * 4]
    split = _split(folder, tmp_path / "split", {"cost_model": str(csv_path), "memory": sizes[1] + sizes[3]})
    import onnx

    layers = [sorted({_module_of(n.name) for n in onnx.load(str(split / f"part_{i}.onnx")).graph.node if n.op_type == "Gemm"})
              for i in range(len(_sessions(split)))]
    assert layers == [["0"], ["2"], ["4", "6"]]  # the Sequential's Linear layers are children 0, 2, 4, 6
    x = np.random.default_rng(0).normal(size=(3, 16)).astype(np.float32)
    np.testing.assert_allclose(_run_chain(split, {"x": x})[0], _whole(str(folder / "model.onnx"), {"x": x})[0], atol=1e-5)


def test_generate_cost_model_precisions(tiny_bert, tmp_path):
    from olive_systems import generate_cost_model

    fp32 = read_cost_model(generate_cost_model(str(tiny_bert), task="feature-extraction", output_path=str(tmp_path)))
    assert (tmp_path / "cost_model.csv").is_file()
    int4 = read_cost_model(generate_cost_model(str(tiny_bert), task="feature-extraction", weight_precision="int4",
                                               output_path=str(tmp_path / "int4.csv")))
    rows = {m: (n, b) for m, n, b in fp32}
    assert rows["embeddings.word_embeddings"][1] == rows["embeddings.word_embeddings"][0] * 4
    assert [m for m, _, _ in int4] == [m for m, _, _ in fp32]
    query = {m: (n, b) for m, n, b in int4}["encoder.layer.0.attention.self.query"]
    assert query == (32 * 32 + 32, 32 * 32 // 2 + 32 * 4)  # the matrix at 4 bits, its bias stays fp32
    from transformers import AutoModel

    assert sum(n for _, n, _ in fp32) == sum(p.numel() for p in AutoModel.from_pretrained(tiny_bert).parameters())


def test_generate_cost_model_of_a_pytorch_script(tmp_path):
    script = tmp_path / "user_script.py"
    script.write_text("import torch\n\n\ndef build(path):\n"
                      "    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))\n")
    out = tmp_path / "c.csv"
    assert cli(["generate-cost-model", "--model-script", str(script), "--model-loader", "build",
                "--weight-precision", "int8", "--output-path", str(out)]) == 0
    assert read_cost_model(out) == [["0", 40, 32 + 8 * 4], ["1", 18, 16 + 2 * 4]]


def test_generate_cost_model_bad_loader_names_the_functions(tmp_path, capsys):
    script = tmp_path / "user_script.py"
    script.write_text("def build(path):\n    pass\n\n\ndef helper():\n    pass\n")
    assert cli(["generate-cost-model", "--model-script", str(script), "--output-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "'_model_loader' is not a function in user_script.py (it defines build, helper)" in err


def test_split_must_end_its_flow(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"]["split"] = {"type": "SplitModel", "config": {"num_splits": 2}}
    recipe["pass_flows"] = [["conversion", "split", "dynamic"]]
    with pytest.raises(RecipeError, match=r"'split' \(SplitModel\) is followed by \['dynamic'\]"):
        load_recipe(recipe)


def test_split_config_needs_one_way_to_cut(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    csv_path = tmp_path / "c.csv"
    csv_path.write_text("module,num_params,num_bytes\n")
    for config in ({"num_splits": 2, "cost_model": str(csv_path), "memory": 10}, {"cost_model": str(csv_path)}, {}):
        recipe["passes"]["split"] = {"type": "SplitModel", "config": config}
        recipe["pass_flows"] = [["conversion", "split"]]
        with pytest.raises(RecipeError, match="passes.split.config"):
            load_recipe(recipe)
    recipe["passes"]["split"]["config"] = {"cost_model": "missing.csv", "memory": 10}
    with pytest.raises(RecipeError, match="passes.split.config.cost_model: .*missing.csv' does not exist"):
        load_recipe(recipe)


def test_cost_model_of_another_model_is_refused(tmp_path):
    folder = _mlp_onnx(tmp_path / "mlp")
    csv_path = tmp_path / "other.csv"
    csv_path.write_text("module,num_params,num_bytes\nencoder.layer.0.attention,10,40\n")
    with pytest.raises(PassError, match="no node of the ONNX model names a module of the cost model"):
        _split(folder, tmp_path / "split", {"cost_model": str(csv_path), "memory": 100})
    bad = tmp_path / "bad.csv"
    bad.write_text("name,bytes\nx,1\n")
    with pytest.raises(RecipeError, match=r"lacks the columns \['module', 'num_params', 'num_bytes'\]"):
        SplitModel.resolve_config({"cost_model": str(bad), "memory": 10})


def test_auto_opt_splits_by_num_splits(tiny_bert, tmp_path):
    from olive_systems import auto_opt
    from olive_systems.workflows import build_recipe

    output = auto_opt(str(tiny_bert), task="feature-extraction", num_splits=2, output_path=str(tmp_path / "out"),
                      cache_dir=str(tmp_path / "cache"))
    assert not output.failures, output.failures
    folder = Path(output.get_best_candidate().model_path)
    assert len(_sessions(folder)) == 2
    assert list(build_recipe("auto_opt", model_name_or_path=str(tiny_bert), task="feature-extraction",
                             num_splits=2)["passes"])[-1] == "split"
    with pytest.raises(RecipeError, match="memory is not set"):
        build_recipe("auto_opt", model_name_or_path=str(tiny_bert), cost_model=str(tmp_path / "c.csv"))


def test_memory_below_one_module_names_it(tmp_path):
    folder = _mlp_onnx(tmp_path / "mlp")
    csv_path = tmp_path / "mlp.csv"
    csv_path.write_text("module,num_params,num_bytes\n0,1088,4352\n2,4160,16640\n")
    with pytest.raises(PassError, match=r"module 2 alone needs 16640 bytes, more than memory \(10000\)"):
        _split(folder, tmp_path / "split", {"cost_model": str(csv_path), "memory": 10000})
