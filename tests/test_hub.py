"""Hugging Face hub model ids and hub datasets, offline from a real HF cache built on disk
(tests/hf_offline_cache.py): no loader is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hf_offline_cache import add_glue_mrpc, add_hub_model, offline_env, use_offline_cache
from olive_systems.errors import RecipeError
from olive_systems.recipe import load_recipe

REPO = Path(__file__).resolve().parent.parent
SECRET = "hf_TESTtokenNEVERwrittenANYWHERE0123456789"


@pytest.fixture(scope="module")
def hub_root(tmp_path_factory, tiny_bert) -> Path:
    """An HF cache with acme/tiny-bert (main) and its glue/mrpc, both offline."""
    root = tmp_path_factory.mktemp("hf_cache")
    add_hub_model(root, "acme/tiny-bert", tiny_bert)
    add_glue_mrpc(root)
    return root


@pytest.fixture
def offline(monkeypatch, hub_root) -> Path:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    use_offline_cache(monkeypatch, hub_root)
    return hub_root


def _recipe(tmp_path: Path, model_path: str, **input_model) -> dict:
    return {"input_model": {"type": "HfModel", "model_path": model_path, **input_model},
            "passes": {"conversion": {"type": "OnnxConversion", "config": {"target_opset": 17}}},
            "engine": {"cache_dir": str(tmp_path / "cache"), "output_dir": str(tmp_path / "out"),
                       "evaluate_input_model": False}}


def test_hub_id_resolves_to_the_cached_snapshot_offline(offline, tiny_bert, tmp_path):
    recipe = load_recipe(_recipe(tmp_path, "acme/tiny-bert"))
    spec = recipe["input_model"]
    folder = Path(spec["model_path"])
    assert folder.parent.parent.name == "models--acme--tiny-bert" and folder.parent.name == "snapshots"
    assert spec["revision"] == folder.name and len(folder.name) == 40  # the commit, not "main"
    assert spec["hub_id"] == "acme/tiny-bert"
    assert (folder / "config.json").read_bytes() == (tiny_bert / "config.json").read_bytes()


def _input_hash(output_dir: Path) -> str:
    models = json.loads((output_dir / "workflow_output.json").read_text())["models"]
    assert models, json.loads((output_dir / "workflow_output.json").read_text())["failures"]
    return models[0]["run_history"][0]["parent_model_id"]


def test_a_new_commit_is_a_new_model_and_a_revision_pins_the_old(monkeypatch, tmp_path, tiny_bert):
    """refs/main moving to a commit with other weights changes the input model's cache key; the old
    commit, given as revision, still resolves to the old snapshot and key."""
    import shutil

    import torch
    from transformers import BertModel

    from olive_systems.api import run

    root = tmp_path / "hf"
    first = add_hub_model(root, "acme/moving", tiny_bert)
    use_offline_cache(monkeypatch, root)
    before = _input_hash(_run(run, _recipe(tmp_path / "a", "acme/moving")))

    retrained = tmp_path / "retrained"
    shutil.copytree(tiny_bert, retrained)
    torch.manual_seed(1)
    BertModel(BertModel.config_class.from_pretrained(tiny_bert)).save_pretrained(retrained)
    second = add_hub_model(root, "acme/moving", retrained)
    assert second != first
    after = _input_hash(_run(run, _recipe(tmp_path / "b", "acme/moving")))
    assert after != before
    assert load_recipe(_recipe(tmp_path, "acme/moving"))["input_model"]["revision"] == second
    pinned = _recipe(tmp_path / "c", "acme/moving", revision=first)
    assert load_recipe(pinned)["input_model"]["revision"] == first
    assert _input_hash(_run(run, pinned)) == before


def _run(run, recipe: dict) -> Path:
    run(recipe)
    return Path(recipe["engine"]["output_dir"])


def test_uncached_hub_id_offline_is_one_line_naming_how_to_cache(offline, tmp_path):
    with pytest.raises(RecipeError) as caught:
        load_recipe(_recipe(tmp_path, "acme/not-downloaded"))
    error = caught.value
    assert "acme/not-downloaded" in error.message and "not in the Hugging Face cache" in error.message
    assert "HF_HUB_OFFLINE=1" in error.message
    assert "huggingface-cli download acme/not-downloaded" in error.fix and "HF_HOME" in error.fix
    with pytest.raises(RecipeError) as caught:  # a revision the cache does not have: what it has, how to get it
        load_recipe(_recipe(tmp_path, "acme/tiny-bert", revision="v2"))
    assert "(revision v2): this revision of the hub model is not in the Hugging Face cache" in caught.value.message
    assert "it has main, " in caught.value.message and "--revision v2" in caught.value.fix


def test_cli_says_it_in_one_error_line_and_its_fix(hub_root, tmp_path):
    recipe = tmp_path / "recipe.json"
    recipe.write_text(json.dumps(_recipe(tmp_path, "acme/not-downloaded")))
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    done = subprocess.run([sys.executable, "-m", "olive_systems", "validate", "--config", str(recipe)],
                          capture_output=True, text=True, env={**env, **offline_env(hub_root)}, cwd=tmp_path, timeout=300)
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 2 and lines[0].startswith("error: ") and lines[1].startswith("fix: "), lines  # no traceback
    assert "acme/not-downloaded" in lines[0] and "huggingface-cli download acme/not-downloaded" in lines[1]


def test_a_local_folder_is_never_taken_for_a_hub_id(offline, tiny_bert, tmp_path):
    (tmp_path / "acme").mkdir()
    local = tmp_path / "acme" / "tiny-bert"
    local.symlink_to(tiny_bert)
    recipe = load_recipe(_recipe(tmp_path, "acme/tiny-bert"), base_dir=tmp_path)
    assert Path(recipe["input_model"]["model_path"]) == tiny_bert.resolve()
    assert "hub_id" not in recipe["input_model"]
    with pytest.raises(RecipeError, match="revision 'main' is set, but model_path is not a hub model id"):
        load_recipe(_recipe(tmp_path, "acme/tiny-bert", revision="main"), base_dir=tmp_path)


def _token_recipe(tmp_path: Path) -> dict:
    recipe = _recipe(tmp_path, "acme/tiny-bert", task="feature-extraction")
    recipe["systems"] = {"local": {"type": "LocalSystem", "hf_token": True}}
    recipe["data_configs"] = [{"name": "mrpc", "load_dataset_config": {"data_name": "glue", "subset": "mrpc",
                                                                       "split": "validation"},
                               "pre_process_data_config": {"type": "tokenize", "input_cols": ["sentence1", "sentence2"], "label_col": "label",
                                                           "max_length": 32, "max_samples": 8},
                               "post_process_data_config": {"type": "mean_pooling"}}]
    recipe["evaluators"] = {"common": {"metrics": [
        {"name": "latency", "type": "latency", "data_config": "mrpc", "sub_types": [{"name": "avg", "priority": 1}],
         "metric_config": {"warmup_num": 1, "repeat_test_num": 2}}]}}
    recipe["engine"]["evaluate_input_model"] = True
    return recipe


def test_hf_token_is_used_and_never_written(offline, tmp_path, monkeypatch, capsys):
    from olive_systems.api import run

    monkeypatch.setenv("HF_TOKEN", SECRET)
    events = []
    recipe = _token_recipe(tmp_path)
    run(recipe, on_event=events.append)
    output = Path(recipe["engine"]["output_dir"])
    assert json.loads((output / "workflow_output.json").read_text())["models"]
    written = [p for p in tmp_path.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert written == []
    assert SECRET not in json.dumps(events, default=str)
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET not in json.dumps(load_recipe(_token_recipe(tmp_path)))


def test_hf_token_from_the_token_file(offline, tmp_path, monkeypatch):
    from huggingface_hub import constants

    Path(constants.HF_TOKEN_PATH).write_text(SECRET)
    try:
        assert load_recipe(_token_recipe(tmp_path))["input_model"]["hub_id"] == "acme/tiny-bert"
    finally:
        Path(constants.HF_TOKEN_PATH).unlink()


def test_hf_token_without_a_token_says_how_to_log_in(offline, tmp_path, tiny_bert):
    local_model = _token_recipe(tmp_path)
    local_model["input_model"]["model_path"] = str(tiny_bert)  # the hub dataset needs the token as well
    for recipe in (_token_recipe(tmp_path), local_model):
        with pytest.raises(RecipeError) as caught:
            load_recipe(recipe)
        assert "systems.local.hf_token" in caught.value.message
        assert "HF_TOKEN" in caught.value.fix and "huggingface-cli login" in caught.value.fix


def test_glue_mrpc_loads_offline_from_the_datasets_cache(offline, tiny_bert):
    from olive_systems.data import load_batches

    config = {"name": "mrpc", "load_dataset_config": {"data_name": "glue", "subset": "mrpc", "split": "validation"},
              "pre_process_data_config": {"type": "tokenize", "input_cols": ["sentence1", "sentence2"],
                                          "label_col": "label", "max_length": 32},
              "dataloader_config": {"batch_size": 16}}
    batches = load_batches(config, tiny_bert)
    assert len(batches.targets) == 60 and set(batches.targets.tolist()) == {0, 1}
    assert batches.inputs[0]["input_ids"].shape[0] == 16
    namespaced = dict(config, load_dataset_config={"data_name": "nyu-mll/glue", "subset": "mrpc", "split": "test"})
    assert len(load_batches(namespaced, tiny_bert).targets) == 40


def test_uncached_hub_dataset_says_so_and_how_to_cache(offline, tiny_bert):
    from olive_systems.data import load_batches

    config = {"name": "sst2", "load_dataset_config": {"data_name": "glue", "subset": "sst2", "split": "validation"},
              "pre_process_data_config": {"type": "tokenize", "input_cols": ["sentence"]}}
    with pytest.raises(RecipeError) as caught:
        load_batches(config, tiny_bert)
    error = caught.value
    assert "'glue' (subset 'sst2') is not in the datasets cache" in error.message and "cached subsets: ['mrpc']" in error.message
    assert "load_dataset('glue', 'sst2')" in error.fix and "HF_DATASETS_CACHE" in error.fix
    config["load_dataset_config"] = {"data_name": "acme/never-seen", "split": "train"}
    with pytest.raises(RecipeError, match="'acme/never-seen' is not in the datasets cache"):
        load_batches(config, tiny_bert)


def test_a_hub_dataset_fingerprint_follows_its_cached_commit(monkeypatch, tmp_path):
    """New rows under a new commit of glue/mrpc: a new data fingerprint (so no stale cached metric)."""
    from olive_systems.data import fingerprint

    root = tmp_path / "hf"
    use_offline_cache(monkeypatch, root)
    config = {"name": "mrpc", "load_dataset_config": {"data_name": "glue", "subset": "mrpc", "split": "validation"},
              "pre_process_data_config": {"type": "tokenize", "input_cols": ["sentence1", "sentence2"]}}
    add_glue_mrpc(root)
    before = fingerprint(config)
    assert fingerprint(config) == before
    row = {"sentence1": "A new row.", "sentence2": "Another new row.", "label": 1, "idx": 0}
    add_glue_mrpc(root, {"train": [row], "validation": [row], "test": [row]})
    assert fingerprint(config) != before


@pytest.mark.parametrize("value, hub", [("acme/tiny-bert", True), ("openai-community/gpt2", True), ("gpt2", False),
                                        ("models/model.onnx", False), ("../acme/x", False), ("/abs/path", False),
                                        ("azureml:model:1", False), ("a/b/c", False)])
def test_what_is_taken_for_a_hub_id(value, hub, tmp_path):
    from olive_systems.hub import is_hub_id

    assert is_hub_id(value, tmp_path) is hub


def test_an_azureml_system_with_a_key_vault_needs_no_local_token(offline):
    from olive_systems.hub import hub_token

    systems = {"aml": {"type": "AzureMLSystem", "hf_token": True, "keyvault_name": "my-vault"}}
    assert hub_token({"systems": systems}, "r") is None  # the job reads secret hf-token from the vault
    systems["local"] = {"type": "LocalSystem", "hf_token": True}
    with pytest.raises(RecipeError, match="systems.local.hf_token"):
        hub_token({"systems": systems}, "r")
