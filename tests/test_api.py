"""The Python API beyond the workflow functions: run()'s setup / packages / package_config / tempdir /
log_level, log_level on every public function, and dir(olive_systems) listing the lazily loaded API."""

from __future__ import annotations

import inspect
import logging
import os
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

import pytest

import olive_systems
from olive_systems.errors import RecipeError
from conftest import DATA
from test_session_tuning_options import tiny_onnx


def recipe_for(model_dir: Path, tmp_path: Path, **overrides) -> dict:
    """One quick pass on a tiny hand-built ONNX model: session tuning, a few calls."""
    recipe = {
        "input_model": {"type": "OnnxModel", "model_path": str(model_dir)},
        "passes": {"tuning": {"type": "OrtSessionParamsTuning",
                              "config": {"intra_op_thread_num_list": [1], "test_num": 3, "warmup_num": 1}}},
        "engine": {"output_dir": str(tmp_path / "out"), "cache_dir": str(tmp_path / "cache")},
    }
    recipe.update(overrides)
    return recipe


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_onnx(tmp_path_factory.mktemp("api") / "model")


# ---- dir() and log_level ----

def test_dir_lists_the_public_api_and_each_name_loads():
    listed = dir(olive_systems)
    for name in ("run", "auto_opt", "finetune", "quantize", "capture_onnx_graph", "generate_adapter",
                 "tune_session_params", "convert_adapters", "extract_adapters",
                 "WorkflowOutput", "DeviceOutput", "ModelOutput"):
        assert name in listed and name in olive_systems.__all__, name
    for name in olive_systems.__all__:
        assert getattr(olive_systems, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'not_there'"):
        olive_systems.not_there  # noqa: B018


def test_every_public_function_takes_log_level():
    functions = [name for name in olive_systems.__all__
                 if inspect.isfunction(getattr(olive_systems, name))]
    assert "run" in functions and "tune_session_params" in functions
    for name in functions:
        parameter = inspect.signature(getattr(olive_systems, name)).parameters.get("log_level")
        assert parameter is not None, f"{name} has no log_level"
        # the seed's default (3, ERROR); run's None leaves an application's own logging set-up alone
        assert parameter.default == (None if name == "run" else 3), name


def test_run_log_level_sets_the_olive_systems_loggers_and_bad_levels_are_refused(model_dir, tmp_path):
    logger = logging.getLogger("olive_systems")
    before = logger.level
    try:
        output = olive_systems.run(recipe_for(model_dir, tmp_path), log_level=1)
        assert not output.failures and logger.level == logging.INFO
        with pytest.raises(RecipeError, match="log_level=7"):
            olive_systems.run(recipe_for(model_dir, tmp_path / "second"), log_level=7)
        assert not (tmp_path / "second").exists()
    finally:
        logger.setLevel(before)


# ---- tempdir ----

def test_tempdir_is_the_root_of_the_runs_temporary_files_and_is_restored(model_dir, tmp_path):
    seen = []

    def on_event(event):
        seen.append((tempfile.gettempdir(), os.environ.get("TMPDIR")))

    before = tempfile.gettempdir(), os.environ.get("TMPDIR")
    scratch = tmp_path / "scratch"
    output = olive_systems.run(recipe_for(model_dir, tmp_path), on_event=on_event, tempdir=scratch)
    assert not output.failures and seen
    assert set(seen) == {(str(scratch.resolve()), str(scratch.resolve()))}
    assert (tempfile.gettempdir(), os.environ.get("TMPDIR")) == before
    (tmp_path / "a_file").write_text("")
    with pytest.raises(RecipeError, match="is a file"):
        olive_systems.run(recipe_for(model_dir, tmp_path / "other"), tempdir=tmp_path / "a_file")


# ---- packages ----

def test_packages_lists_the_pinned_requirements_and_runs_nothing(model_dir, tmp_path):
    listed = olive_systems.run(recipe_for(model_dir, tmp_path), packages=True)
    assert "onnxruntime==1.31.1" in listed and "onnx==1.23.2" in listed
    assert "torch" not in " ".join(listed)  # session tuning of an ONNX model needs no torch
    written = (tmp_path / "out" / "requirements.txt").read_text().split("\n")
    assert [line for line in written if line and not line.startswith("#")] == listed
    assert not (tmp_path / "cache").exists()  # nothing ran
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["requirements.txt"]


def test_packages_follow_passes_data_search_and_the_target_ep(model_dir, tiny_bert, tmp_path):
    def names(listed):
        return {r.split("=")[0].split(">")[0] for r in listed}

    exported = recipe_for(model_dir, tmp_path, input_model={"type": "HfModel", "model_path": str(tiny_bert)},
                          passes={"conversion": {"type": "OnnxConversion"}})
    assert {"torch", "transformers", "onnxscript", "onnx"} <= names(olive_systems.run(exported, packages=True))
    data = [{"name": "texts", "load_dataset_config": {"data_name": "csv", "data_files": str(DATA / "calibration_sentences.csv")},
             "pre_process_data_config": {"type": "tokenize", "input_cols": ["text"]}}]
    assert "datasets" in names(olive_systems.run({**exported, "data_configs": data}, packages=True))
    searched = {"tuning": {"type": "OrtSessionParamsTuning", "config": {"test_num": {"choices": [3, 5]}}}}
    assert "optuna" in names(olive_systems.run(recipe_for(model_dir, tmp_path, passes=searched), packages=True))
    cuda = {"local_system": {"type": "LocalSystem",
                             "accelerators": [{"device": "gpu", "execution_providers": ["CUDAExecutionProvider"]}]}}
    on_cuda = olive_systems.run(recipe_for(model_dir, tmp_path, systems=cuda), packages=True)
    assert "onnxruntime-gpu==1.31.1" in on_cuda and "onnxruntime" not in names(on_cuda)  # the build replaces it


def test_package_config_adds_and_overrides_and_is_checked(model_dir, tmp_path):
    config = {"passes": {"OrtSessionParamsTuning": {"requirements": ["onnx==1.22.0"]}},
              "requirements": ["my-metrics==0.1"]}
    listed = olive_systems.run(recipe_for(model_dir, tmp_path), packages=True, package_config=config)
    assert "onnx==1.22.0" in listed and "onnx==1.23.2" not in listed and "my-metrics==0.1" in listed
    path = tmp_path / "packages.json"
    path.write_text('{"requirements": ["my-metrics==0.2"]}')
    assert "my-metrics==0.2" in olive_systems.run(recipe_for(model_dir, tmp_path), packages=True, package_config=path)
    with pytest.raises(RecipeError, match="unknown key"):
        olive_systems.run(recipe_for(model_dir, tmp_path), packages=True, package_config={"extras": []})
    with pytest.raises(RecipeError, match="OnnxConversion is not a pass type of this recipe"):
        olive_systems.run(recipe_for(model_dir, tmp_path), packages=True,
                          package_config={"passes": {"OnnxConversion": {"requirements": ["torch"]}}})
    with pytest.raises(RecipeError, match="neither is asked for"):
        olive_systems.run(recipe_for(model_dir, tmp_path), package_config=config)


# ---- setup: a real pip install into a throwaway environment ----

def tiny_wheel(folder: Path, name: str = "h4_tiny_pkg", version: str = "0.1") -> Path:
    """A pure-Python wheel built by hand (a wheel is a zip with a dist-info), so pip installs offline."""
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{name}-{version}-py3-none-any.whl"
    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 42\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return folder


def test_setup_installs_what_is_missing_and_only_that(model_dir, tmp_path):
    # A throwaway venv that sees this one's packages (so only the tiny package is missing) and its pip.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    child = venv / "bin" / "python"
    child_site = Path(subprocess.run([str(child), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                     capture_output=True, text=True, check=True).stdout.strip())
    (child_site / "parent.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
    wheels = tiny_wheel(tmp_path / "wheels")
    recipe = tmp_path / "recipe.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump(recipe_for(model_dir, tmp_path)))
    script = ("import olive_systems; print(olive_systems.run({!r}, setup=True, "
              "package_config={{'requirements': ['h4-tiny-pkg==0.1']}}))").format(str(recipe))
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
           "PYTHONPATH": str(Path(olive_systems.__file__).resolve().parent.parent)}
    first = subprocess.run([str(child), "-c", script], capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.strip().splitlines()[-1] == "['h4-tiny-pkg==0.1']"  # only what was missing
    assert (child_site / "h4_tiny_pkg" / "__init__.py").is_file()
    assert not (Path(sysconfig.get_paths()["purelib"]) / "h4_tiny_pkg").exists()  # this environment untouched
    second = subprocess.run([str(child), "-c", script], capture_output=True, text=True, env=env)
    assert second.returncode == 0 and second.stdout.strip().splitlines()[-1] == "[]"  # nothing left to install
    assert not (tmp_path / "cache").exists()  # setup runs nothing


def test_setup_that_pip_cannot_satisfy_says_so(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))  # an empty folder: nothing to install from
    from olive_systems.errors import OliveSystemsError

    with pytest.raises(OliveSystemsError, match="pip could not install h4-not-a-package==9") as error:
        olive_systems.run(recipe_for(model_dir, tmp_path), setup=True,
                          package_config={"requirements": ["h4-not-a-package==9"]})
    assert error.value.fix
