"""ONNX models with external data (model.onnx + model.onnx.data: every dynamo export, every model over
2 GB) through every pass, the cache and the output folder. onnx >= 1.23 refuses an external data file
with more than one hard link, so none may be hard-linked anywhere."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import olive_systems
from olive_systems.models import (
    ONNX_DATA_FILE, copy_side_files, copy_tree, external_data_files, load_onnx, save_onnx,
)

from conftest import tiny_recipe

FLOWS = {
    "fusion-dynamic": ["fusion", "dynamic"],
    "static": ["static"],
    "fp16": ["fp16"],
    "dynamic-tuning": ["dynamic", "tuning"],
}


@pytest.fixture(scope="module")
def external_bert(tiny_bert, tmp_path_factory) -> Path:
    """The tiny BERT exported (TorchScript exporter) and re-saved with all weights in model.onnx.data."""
    import torch
    from transformers import BertModel

    folder = tmp_path_factory.mktemp("external_bert")
    for path in tiny_bert.iterdir():
        if path.is_file() and not path.name.endswith((".safetensors", ".bin")):
            shutil.copy2(path, folder / path.name)
    model = BertModel.from_pretrained(tiny_bert).eval()
    model.config.return_dict = False
    ids = torch.ones(1, 8, dtype=torch.int64)
    scratch = tmp_path_factory.mktemp("export") / "model.onnx"
    axes = {0: "batch_size", 1: "sequence_length"}
    torch.onnx.export(model, (ids, ids, torch.zeros_like(ids)), str(scratch), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask", "token_type_ids"],
                      output_names=["last_hidden_state", "pooler_output"],
                      dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes,
                                    "last_hidden_state": axes, "pooler_output": {0: "batch_size"}})
    onnx.save_model(onnx.load(str(scratch)), str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location=ONNX_DATA_FILE, size_threshold=0)
    assert (folder / ONNX_DATA_FILE).stat().st_size > 0
    return folder


def _recipe(model_folder: Path, tmp: Path) -> dict:
    recipe = tiny_recipe(model_folder, tmp)
    recipe["input_model"] = {"type": "OnnxModel", "model_path": str(model_folder), "task": "feature-extraction"}
    fidelity = next(m for m in recipe["evaluators"]["common"]["metrics"] if m["type"] == "fidelity")
    recipe["evaluators"]["common"]["metrics"] = [fidelity]
    recipe["data_configs"][0]["pre_process_data_config"]["max_samples"] = 8
    recipe["passes"].pop("conversion")
    recipe["passes"]["fp16"] = {"type": "OnnxFloatToFloat16"}
    recipe["passes"]["tuning"]["config"].update(intra_op_thread_num_list=[1], test_num=2)
    recipe["pass_flows"] = list(FLOWS.values())
    return recipe


def _data_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and p.name.endswith(".data")]


def _check_output(out: Path) -> None:
    import onnxruntime as ort

    ranked = json.loads((out / "models_rank.json").read_text())
    assert {entry["model_id"] for entry in ranked} == set(FLOWS)
    for entry in ranked:
        path = out / entry["model_id"] / "model.onnx"
        proto = onnx.load(str(path))  # external data included: refused if the data file is hard-linked
        assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in proto.graph.initializer)
        assert (path.parent / ONNX_DATA_FILE).is_file(), f"{entry['model_id']} lost its external data"
        assert (path.parent / "tokenizer.json").is_file()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        ids = np.array([[101, 2023, 2003, 1037, 3231, 102]], dtype=np.int64)
        feed = {i.name: (ids if i.name == "input_ids" else np.ones_like(ids) if "mask" in i.name else np.zeros_like(ids))
                for i in session.get_inputs()}
        hidden = session.run(None, feed)[0]
        assert hidden.shape[:2] == (1, 6) and np.isfinite(hidden).all()


def test_external_data_through_passes_cache_and_output(external_bert, tmp_path):
    recipe = _recipe(external_bert, tmp_path)
    first = olive_systems.run(recipe)
    assert not first.failures, first.failures
    out, cache = tmp_path / "out", tmp_path / "cache"
    _check_output(out)
    data_files = _data_files(cache) + _data_files(out)
    assert len(_data_files(cache)) >= 5 and len(_data_files(out)) == len(FLOWS)
    assert [p for p in data_files if p.stat().st_nlink > 1] == []
    assert (external_bert / ONNX_DATA_FILE).stat().st_nlink == 1

    second = olive_systems.run(recipe)
    assert not second.failures
    assert second.steps and all(step["cached"] for step in second.steps)
    _check_output(out)
    assert [p for p in _data_files(cache) + _data_files(out) if p.stat().st_nlink > 1] == []


def test_save_onnx_picks_external_data_by_origin_and_size(external_bert, tmp_path):
    proto = load_onnx(external_bert)
    small = tmp_path / "inline"
    assert not save_onnx(proto, small)  # small and not asked: one file
    assert sorted(p.name for p in small.iterdir()) == ["model.onnx"]
    external = tmp_path / "external"
    assert save_onnx(proto, external, external_data=True)
    assert sorted(p.name for p in external.iterdir()) == ["model.onnx", ONNX_DATA_FILE]
    assert external_data_files(external) == [ONNX_DATA_FILE]
    big = tmp_path / "big"
    assert save_onnx(load_onnx(small), big, size_threshold=1024)  # over the size limit: external
    assert (big / ONNX_DATA_FILE).is_file()
    onnx.checker.check_model(onnx.load(str(big / "model.onnx")))


def test_side_files_and_tree_copies_never_link_external_data(external_bert, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(load_onnx(external_bert), str(src / "model.onnx"), save_as_external_data=True,
                    location="weights.data", size_threshold=0)  # an odd data file name, referenced by the model
    (src / "tokenizer.json").write_text("{}")
    (src / "notes.bin.data").write_text("not referenced")

    side = tmp_path / "side"
    copy_side_files(src, side)
    assert sorted(p.name for p in side.iterdir()) == ["tokenizer.json"]

    tree = tmp_path / "tree"
    copy_tree(src, tree)
    assert (tree / "weights.data").stat().st_nlink == 1 and (src / "weights.data").stat().st_nlink == 1
    assert (tree / "tokenizer.json").stat().st_nlink == 2  # other files may still be linked
    onnx.load(str(tree / "model.onnx"))
