"""Every command of Olive's command line in seed 000 has its olive-systems subcommand, and each works
on a tiny model from the command line.

Where another test already runs the subcommand end to end it is not run again here:
- quantize, capture-onnx-graph: tests/test_workflows.py::test_cli_subcommands_run
- run --config (a saved recipe run again): tests/test_workflows.py::test_auto_opt_searches_ranks_fixes_shapes_and_its_recipe_runs_again
- finetune: tests/test_lora.py::test_finetune_end_to_end
- generate-cost-model: tests/test_split.py
The others run here: run (with --tempdir, --log-level, --packages, --setup), auto-opt,
tune-session-params, generate-adapter, convert-adapters and extract-adapters.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from olive_systems.cli import build_parser, main
from test_session_tuning_options import tiny_onnx

# Olive's commands (seed 000's functions: `olive auto-opt` is `auto_opt`, ...)
SEED_COMMANDS = ["run", "auto-opt", "finetune", "quantize", "capture-onnx-graph", "generate-adapter",
                 "tune-session-params", "convert-adapters", "extract-adapters", "generate-cost-model"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli_commands")


@pytest.fixture(scope="module")
def model_dir(work) -> Path:
    return tiny_onnx(work / "tiny_onnx")


def subcommands() -> set[str]:
    return set(build_parser()._subparsers._group_actions[0].choices)


@pytest.mark.parametrize("command", SEED_COMMANDS)
def test_each_seed_command_is_a_subcommand_in_both_spellings(command, capsys):
    spellings = {command, command.replace("-", "_")}
    assert spellings <= subcommands()
    for spelling in spellings:
        with pytest.raises(SystemExit) as exit_info:
            main([spelling, "--help"])
        assert exit_info.value.code == 0
        assert "usage: olive-systems" in capsys.readouterr().out


# ---- run ----

def write_recipe(model_dir: Path, work: Path, name: str) -> Path:
    recipe = {
        "input_model": {"type": "OnnxModel", "model_path": str(model_dir)},
        "passes": {"tuning": {"type": "OrtSessionParamsTuning",
                              "config": {"intra_op_thread_num_list": [1], "test_num": 3, "warmup_num": 1}}},
        "engine": {"output_dir": str(work / name / "out"), "cache_dir": str(work / name / "cache")},
    }
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_run_with_tempdir_and_log_level(model_dir, work):
    recipe = write_recipe(model_dir, work, "run")
    assert main(["run", "--config", str(recipe), "--tempdir", str(work / "scratch"), "--log-level", "2"]) == 0
    ranked = json.loads((work / "run" / "out" / "models_rank.json").read_text())
    assert [entry["model_id"] for entry in ranked] == ["tuning"]
    assert (work / "scratch").is_dir()


def test_run_packages_and_setup_run_nothing(model_dir, work, capsys):
    recipe = write_recipe(model_dir, work, "packages")
    assert main(["run", "--config", str(recipe), "--packages"]) == 0
    listed = capsys.readouterr().out.split()
    assert "onnxruntime==1.31.1" in listed
    assert (work / "packages" / "out" / "requirements.txt").is_file()
    assert main(["run", "--config", str(recipe), "--setup"]) == 0  # this environment has them all
    assert "every package is installed already" in capsys.readouterr().out
    assert not (work / "packages" / "cache").exists()
    assert main(["run", "--config", str(recipe), "--package-config", str(recipe)]) == 2  # neither --setup nor --packages
    assert "--package-config" in capsys.readouterr().err


# ---- the workflow subcommands ----

def test_auto_opt(model_dir, work):
    out = work / "auto_opt"
    assert main(["auto-opt", "--model-name-or-path", str(model_dir), "--task", "feature-extraction",
                 "--precision", "int8", "--output-path", str(out), "--cache-dir", str(work / "cache")]) == 0
    ranked = json.loads((out / "models_rank.json").read_text())
    assert [entry["model_id"] for entry in ranked] == ["dynamic_int8"]
    assert ranked[0]["metrics"]["latency-avg"]["value"] > 0


def test_tune_session_params(model_dir, work):
    out = work / "tuned"
    assert main(["tune-session-params", "--model-name-or-path", str(model_dir), "--output-path", str(out),
                 "--cache-dir", str(work / "cache"), "--io_bind", "--intra_thread_num_list", "1", "2",
                 "--execution_mode_list", "0", "1", "--enable_profiling",
                 "--extra_session_config", '{"session.intra_op.allow_spinning": "0"}', "--save_config_file"]) == 0
    folder = out / "session_params_tuning"
    settings = json.loads((folder / "inference_config.json").read_text())
    assert settings["session_options"]["extra_session_config"] == {"session.intra_op.allow_spinning": "0"}
    assert (folder / "ort_profile.json").is_file()
    recipe = yaml.safe_load((out / "tune_session_params_config.yaml").read_text())
    config = recipe["passes"]["session_params_tuning"]["config"]
    assert config["execution_mode_list"] == ["ORT_SEQUENTIAL", "ORT_PARALLEL"] and config["io_bind"] is True


def test_tune_session_params_refuses_a_missing_ep_with_exit_code_2(model_dir, work, capsys):
    out = work / "tuned_cuda"
    code = main(["tune-session-params", "--model-name-or-path", str(model_dir), "--output-path", str(out),
                 "--cache-dir", str(work / "cache_cuda"), "--providers_list", "CUDAExecutionProvider"])
    err = capsys.readouterr().err
    assert code == 2 and "CUDAExecutionProvider is not in this onnxruntime build" in err and "fix:" in err
    assert not out.exists() and not (work / "cache_cuda").exists()


# ---- the adapter subcommands (a tiny llama and a LoRA adapter of it, as tests/test_adapters.py makes them) ----

@pytest.fixture(scope="module")
def adapter(tiny_llama, work) -> Path:
    from test_adapters import make_adapter

    return make_adapter(tiny_llama, work / "adapter", seed=1, alpha=8)


def test_extract_and_convert_adapters(adapter, work, capsys):
    from olive_systems.llm.adapters import load_adapter_weights

    assert main(["extract-adapters", "--model-name-or-path", str(adapter), "--format", "safetensors",
                 "--output", str(work / "extracted")]) == 0
    extracted = work / "extracted" / "adapter_weights.safetensors"
    assert f"written: {extracted}" in capsys.readouterr().out
    assert main(["convert-adapters", "--adapter-path", str(adapter), "--output-path", str(work / "one.onnx_adapter"),
                 "--quantize_int4", "--int4_block_size", "16"]) == 0
    assert "written:" in capsys.readouterr().out
    assert sorted(load_adapter_weights(extracted)) and (work / "one.onnx_adapter").stat().st_size > 0


def test_generate_adapter(tiny_llama, adapter, work):
    from test_adapters import export_with_adapter

    exported = export_with_adapter(tiny_llama, adapter, work / "export")
    out = work / "generated"
    assert main(["generate-adapter", "--model-name-or-path", str(exported), "--output-path", str(out),
                 "--cache-dir", str(work / "cache")]) == 0
    ranked = json.loads((out / "models_rank.json").read_text())
    folder = Path(ranked[0]["model_config"]["config"]["model_path"]).parent
    assert (folder / "adapter_weights.onnx_adapter").is_file()
