"""Zipfile packaging in the seed's layout, and MLflow export, on a real run of the tiny BERT.

One run (two pass flows, so two candidates; the second tuned, so it has session options) packages
OutputModels.zip, and WithMlflow.zip when mlflow is installed. The zip is checked file by file
against the run's output, its Python sample is extracted and run against the packaged model, and
the ONNX Runtime wheel inside must be the exact version installed here. Failure paths: a packaging
that fails leaves no half-written zip (and an earlier zip whole), a wheel that cannot be found is a
warning and a README, and export_in_mlflow_format without mlflow is one clear error.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import olive_systems
from olive_systems.errors import OliveSystemsError
from olive_systems.output import ModelOutput, WorkflowOutput
from olive_systems.packaging import check_packaging, package
from olive_systems.packaging import ort_packages
from olive_systems.packaging.samples import render_samples
from olive_systems.packaging.zipfile import candidate_layout

from conftest import tiny_recipe

HAS_MLFLOW = importlib.util.find_spec("mlflow") is not None
ORT_VERSION = metadata.version("onnxruntime")
METADATA = {"inference_config.json", "run_history.json", "metrics.json", "model_info.json"}
SAMPLES = {"SampleCode/README.md", "SampleCode/Python/run_model.py", "SampleCode/Cpp/run_model.cpp",
           "SampleCode/Cpp/CMakeLists.txt", "SampleCode/CSharp/Program.cs", "SampleCode/CSharp/RunModel.csproj"}


@pytest.fixture(scope="module")
def run(tiny_bert, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packaging")
    recipe = tiny_recipe(tiny_bert, tmp)
    recipe["pass_flows"] = [["conversion"], ["conversion", "dynamic", "tuning"]]
    recipe["evaluators"]["common"]["metrics"] = [m for m in recipe["evaluators"]["common"]["metrics"]
                                                 if m["name"] in ("latency", "fidelity")]
    packaging = [{"type": "Zipfile", "name": "OutputModels"}]
    if HAS_MLFLOW:
        packaging.append({"type": "Zipfile", "name": "WithMlflow", "config": {"export_in_mlflow_format": True}})
    recipe["engine"]["packaging_config"] = packaging
    output = olive_systems.run(recipe)
    return tmp / "out", output


def zip_json(archive: zipfile.ZipFile, name: str):
    return json.loads(archive.read(name))


def candidate_folder(model: ModelOutput) -> Path:
    return Path(model.model_path).parent


def test_zip_holds_the_seed_layout_file_by_file(run):
    out, output = run
    models = output.get_output_models()
    assert len(models) == 2 and [m.rank for m in models] == [1, 2]
    expected = {"models_rank.json", *SAMPLES}
    for k, model in enumerate(models, start=1):
        prefix = f"CandidateModels/cpu-cpu/BestCandidateModel_{k}"
        folder = candidate_folder(model)
        model_files = [p for p in folder.rglob("*") if p.is_file() and p.name not in METADATA]
        assert {"model.onnx", "tokenizer.json", "config.json"} <= {p.name for p in model_files}
        expected |= {f"{prefix}/{p.relative_to(folder).as_posix()}" for p in model_files}
        expected |= {f"{prefix}/configurations.json", f"{prefix}/metrics.json", f"{prefix}/inference_config.json"}
    with zipfile.ZipFile(out / "OutputModels.zip") as archive:
        assert archive.testzip() is None
        names = set(archive.namelist())
        wheels = {n for n in names if n.startswith("ONNXRuntimePackages/")}
        assert names - wheels == expected
        assert len(wheels) == 1 and wheels.pop().endswith(".whl")
        for k, model in enumerate(models, start=1):  # the model files are the output's, byte for byte
            folder = candidate_folder(model)
            for path in folder.rglob("*"):
                if path.is_file() and path.name not in METADATA:
                    inner = f"CandidateModels/cpu-cpu/BestCandidateModel_{k}/{path.relative_to(folder).as_posix()}"
                    assert archive.read(inner) == path.read_bytes(), inner
    assert not list(out.glob(".*.tmp-*")), "a temporary zip was left behind"


def test_candidate_files_match_the_run_output(run):
    out, output = run
    with zipfile.ZipFile(out / "OutputModels.zip") as archive:
        for k, model in enumerate(output.get_output_models(), start=1):
            prefix = f"CandidateModels/cpu-cpu/BestCandidateModel_{k}"
            history = zip_json(archive, f"{prefix}/configurations.json")
            assert history == json.loads(json.dumps(output.trace_back_run_history(model.model_id)))
            # the seed's model configuration file: each pass run by model id, the input model -> null
            steps = [value for value in history.values() if value is not None]
            assert [s["type"] for s in reversed(steps)] == [h["type"] for h in model.run_history]
            assert list(history.values()).count(None) == 1 and history[model.run_history[0]["parent_model_id"]] is None
            metrics = zip_json(archive, f"{prefix}/metrics.json")
            assert metrics == {"input_model_metrics": output.get_input_model_metrics(), "metrics": model.metrics}
            assert metrics == json.loads((candidate_folder(model) / "metrics.json").read_text())
            settings = zip_json(archive, f"{prefix}/inference_config.json")
            assert settings == model.get_inference_config()
            assert settings["execution_provider"][0][0] == "CPUExecutionProvider"
    tuned = next(m for m in output.get_output_models() if m.from_pass() == "OrtSessionParamsTuning")
    assert tuned.get_inference_config()["session_options"].get("intra_op_num_threads") in (None, 1, 2)  # None: ORT's default kept


def test_models_rank_ranks_every_model_with_paths_inside_the_zip(run):
    out, output = run
    on_disk = json.loads((out / "models_rank.json").read_text())
    with zipfile.ZipFile(out / "OutputModels.zip") as archive:
        ranked = zip_json(archive, "models_rank.json")
        names = set(archive.namelist())
    assert [e["model_id"] for e in ranked] == [m.model_id for m in output.get_output_models()]
    assert [e["rank"] for e in ranked] == list(range(1, len(output.get_output_models()) + 1))
    for k, (entry, original) in enumerate(zip(ranked, on_disk), start=1):
        path = entry["model_config"]["config"]["model_path"]
        assert path == f"CandidateModels/cpu-cpu/BestCandidateModel_{k}/model.onnx" and path in names
        original["model_config"]["config"]["model_path"] = path
        assert entry == original  # the output folder's models_rank.json but for the path


def test_onnxruntime_wheel_is_the_exact_installed_version(run):
    out, _ = run
    with zipfile.ZipFile(out / "OutputModels.zip") as archive:
        [name] = [n for n in archive.namelist() if n.startswith("ONNXRuntimePackages/")]
        assert Path(name).name.startswith(f"onnxruntime-{ORT_VERSION}-") and name.endswith(".whl")
        with archive.open(name) as member, zipfile.ZipFile(member) as wheel:
            wheel_metadata = wheel.read(f"onnxruntime-{ORT_VERSION}.dist-info/METADATA").decode()
    assert f"\nVersion: {ORT_VERSION}\n" in wheel_metadata


def test_python_sample_runs_the_packaged_model(run, tmp_path):
    out, output = run
    with zipfile.ZipFile(out / "OutputModels.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    root = tmp_path / "unzipped"
    sample = root / "SampleCode" / "Python" / "run_model.py"
    assert 'CANDIDATE = "CandidateModels/cpu-cpu/BestCandidateModel_1"' in sample.read_text()
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    # from another folder: the sample finds the package from its own path
    proc = subprocess.run([sys.executable, str(sample)], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "execution provider: CPUExecutionProvider" in proc.stdout
    assert "BestCandidateModel_1" in proc.stdout
    assert "output last_hidden_state: shape [1, 8, 32] float32" in proc.stdout, proc.stdout
    # any candidate folder, here the tuned one with its session options
    second = root / "CandidateModels" / "cpu-cpu" / "BestCandidateModel_2"
    proc = subprocess.run([sys.executable, str(sample), str(second)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "output last_hidden_state: shape [1, 8, 32]" in proc.stdout


def test_cpp_and_csharp_samples_carry_the_candidate_settings():
    """They cannot be compiled here (no ONNX Runtime headers, no .NET SDK): their generated code is checked."""
    def model(ep: str, options: dict, session: dict) -> ModelOutput:
        return ModelOutput({"model_id": "m", "model_path": "/x/model.onnx", "model_type": "onnxmodel", "metrics": {},
                            "device": "gpu" if ep.startswith("CUDA") else "cpu", "execution_provider": ep,
                            "model_config": {"config": {"inference_settings": {"execution_provider": [[ep, options]],
                                                                               "session_options": session}}}})

    session = {"intra_op_num_threads": 4, "inter_op_num_threads": 1, "execution_mode": 1, "graph_optimization_level": 99,
               "extra_session_config": {"session.set_denormal_as_zero": "1"}}
    files = render_samples(model("OpenVINOExecutionProvider", {"device_type": "CPU"}, session),
                           "CandidateModels/cpu-openvino/BestCandidateModel_1",
                           {"package": "onnxruntime-openvino", "version": "1.24.1"})
    assert set(files) == {p.removeprefix("SampleCode/") for p in SAMPLES}
    cpp, cs = files["Cpp/run_model.cpp"], files["CSharp/Program.cs"]
    for line in ("options.SetIntraOpNumThreads(4);", "options.SetInterOpNumThreads(1);",
                 "options.SetExecutionMode(ORT_PARALLEL);", "options.SetGraphOptimizationLevel(ORT_ENABLE_ALL);",
                 'options.AddConfigEntry("session.set_denormal_as_zero", "1");',
                 'provider_options{{"device_type", "CPU"}};', "options.AppendExecutionProvider_OpenVINO_V2(provider_options);",
                 '"CandidateModels/cpu-openvino/BestCandidateModel_1/model.onnx"'):
        assert line in cpp, line
    for line in ("options.IntraOpNumThreads = 4;", "options.ExecutionMode = ExecutionMode.ORT_PARALLEL;",
                 "options.GraphOptimizationLevel = GraphOptimizationLevel.ORT_ENABLE_ALL;",
                 'options.AddSessionConfigEntry("session.set_denormal_as_zero", "1");',
                 'options.AppendExecutionProvider_OpenVINO("CPU");'):
        assert line in cs, line
    assert 'Include="Intel.ML.OnnxRuntime.OpenVino"' in files["CSharp/RunModel.csproj"]
    assert "not compiled" in files["README.md"] and not re.search(r"__[A-Z_]+__", "".join(files.values()))
    cuda = render_samples(model("CUDAExecutionProvider", {"device_id": 0}, {}), "CandidateModels/gpu-cuda/BestCandidateModel_1",
                          {"package": "onnxruntime-gpu", "version": "1.31.1"})
    assert "api.UpdateCUDAProviderOptions(provider_options, keys, values, 1)" in cuda["Cpp/run_model.cpp"]
    assert "options.AppendExecutionProvider_CUDA_V2(*provider_options);" in cuda["Cpp/run_model.cpp"]
    assert 'cudaOptions.UpdateOptions(new Dictionary<string, string> { ["device_id"] = "0" });' in cuda["CSharp/Program.cs"]
    assert 'Include="Microsoft.ML.OnnxRuntime.Gpu" Version="1.31.1"' in cuda["CSharp/RunModel.csproj"]


def test_candidate_folders_count_within_each_accelerator():
    def model(model_id, ep, rank):
        return ModelOutput({"model_id": model_id, "model_path": "m.onnx", "model_type": "onnxmodel", "model_config": {},
                            "metrics": {}, "device": "cpu", "execution_provider": ep, "rank": rank})

    models = [model("a", "CPUExecutionProvider", 1), model("b", "OpenVINOExecutionProvider", 2),
              model("c", "CPUExecutionProvider", 3), model("d", "OpenVINOExecutionProvider", 4)]
    assert candidate_layout(models) == {"a": "CandidateModels/cpu-cpu/BestCandidateModel_1",
                                        "b": "CandidateModels/cpu-openvino/BestCandidateModel_1",
                                        "c": "CandidateModels/cpu-cpu/BestCandidateModel_2",
                                        "d": "CandidateModels/cpu-openvino/BestCandidateModel_2"}


def test_a_pytorch_candidate_is_packaged_without_onnx_extras(tiny_bert, tmp_path):
    """Samples, inference settings and wheels are for ONNX models; a Hugging Face candidate gets its files only."""
    model = {"model_id": "hf", "model_path": str(tiny_bert), "model_type": "hfmodel", "model_config": {"type": "HfModel"},
             "metrics": {}, "device": "cpu", "execution_provider": "CPUExecutionProvider", "rank": 1, "run_history": []}
    [written] = package(WorkflowOutput({"models": [model], "input_model_metrics": None}), {"type": "Zipfile", "name": "Hf"},
                        tmp_path)
    with zipfile.ZipFile(written) as archive:
        names = set(archive.namelist())
        prefix = "CandidateModels/cpu-cpu/BestCandidateModel_1"
        assert {f"{prefix}/config.json", f"{prefix}/model.safetensors", f"{prefix}/configurations.json",
                f"{prefix}/metrics.json", "SampleCode/README.md", "ONNXRuntimePackages/README.txt", "models_rank.json"} <= names
        assert f"{prefix}/inference_config.json" not in names and not any(n.endswith(".whl") for n in names)
        assert zip_json(archive, f"{prefix}/configurations.json") == {"hf": None}
        assert zip_json(archive, "models_rank.json")[0]["model_config"]["config"]["model_path"] == prefix


def copied_output(run, tmp_path) -> tuple[Path, dict]:
    """A copy of the run's output folder (tests that break or extend it leave the shared one alone)."""
    out, _ = run
    copy_dir = tmp_path / "out"
    shutil.copytree(out, copy_dir, ignore=shutil.ignore_patterns("*.zip"))
    data = json.loads((copy_dir / "workflow_output.json").read_text())
    for model in data["models"]:
        model["model_path"] = model["model_path"].replace(str(out), str(copy_dir))
    return copy_dir, data


def test_failed_packaging_leaves_no_half_written_zip(run, tmp_path, monkeypatch):
    out, data = copied_output(run, tmp_path)
    (out / "OutputModels.zip").write_bytes(b"the previous package")
    Path(data["models"][1]["model_path"]).unlink()  # the second candidate's model is gone
    with pytest.raises(OliveSystemsError, match="lacks its model"):
        package(WorkflowOutput(data), {"type": "Zipfile", "name": "OutputModels"}, out)
    assert (out / "OutputModels.zip").read_bytes() == b"the previous package"
    assert not list(out.glob(".*.tmp-*"))

    _, data = copied_output(run, tmp_path / "again")  # an interrupt half-way, after the candidates were written
    out = tmp_path / "again" / "out"

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr("olive_systems.packaging.zipfile.find_wheel", interrupted)
    with pytest.raises(KeyboardInterrupt):
        package(WorkflowOutput(data), {"type": "Zipfile", "name": "OutputModels"}, out)
    assert not list(out.glob("*.zip")) and not list(out.glob(".*.tmp-*"))


def wheel(folder: Path, package: str, version: str) -> Path:
    """A minimal, valid wheel of package==version (pip reads its metadata): a stand-in for the real
    multi-MB runtime wheels, so the lookup is tested the same on every machine."""
    folder.mkdir(parents=True, exist_ok=True)
    dist = f"{package.replace('-', '_')}-{version}"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{dist}.dist-info/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        archive.writestr(f"{dist}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        archive.writestr(f"{dist}.dist-info/RECORD", "")
    return path


def test_wheels_follow_each_candidates_runtime(run, tmp_path, monkeypatch):
    """One wheel per distinct package and version, fetched by `pip download` when nothing local has
    it; one that no source has is a warning and a README."""
    out, data = copied_output(run, tmp_path)
    data = copy.deepcopy(data)
    data["models"][0]["runtime"] = {"package": "onnxruntime", "version": ORT_VERSION}
    data["models"][1]["runtime"] = {"package": "onnxruntime", "version": "0.0.1"}
    # no index and no image wheels: pip download finds only what this folder holds
    links = tmp_path / "links"
    wheel(links, "onnxruntime", ORT_VERSION)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    monkeypatch.setattr(ort_packages, "IMAGE_WHEELS", tmp_path / "no-image-wheels")
    warnings = []
    [written] = package(WorkflowOutput(data), {"type": "Zipfile", "name": "Pkg"}, out, warn=warnings.append)
    with zipfile.ZipFile(written) as archive:
        packages = sorted(n for n in archive.namelist() if n.startswith("ONNXRuntimePackages/"))
        readme = archive.read("ONNXRuntimePackages/README.txt").decode()
    assert "onnxruntime==0.0.1" in readme
    assert "pip download --no-deps --only-binary=:all: onnxruntime==0.0.1 -d ONNXRuntimePackages" in readme
    assert len(warnings) == 1 and "onnxruntime==0.0.1" in warnings[0]
    assert [Path(n).name.split("-")[:2] for n in packages if n.endswith(".whl")] == [["onnxruntime", ORT_VERSION]]


def test_openvino_runtime_packs_its_own_wheel(run, tmp_path, monkeypatch):
    """A candidate scored in the OpenVINO image gets the onnxruntime-openvino wheel, from the image wheels."""
    version = "1.24.1"
    images = tmp_path / "image-wheels"
    wheel(images, "onnxruntime-openvino", version)
    wheel(images, "onnxruntime", ORT_VERSION)
    monkeypatch.setattr(ort_packages, "IMAGE_WHEELS", images)
    out, data = copied_output(run, tmp_path)
    data["models"][1]["runtime"] = {"package": "onnxruntime-openvino", "version": version}
    [written] = package(WorkflowOutput(data), {"type": "Zipfile", "name": "Pkg"}, out)
    with zipfile.ZipFile(written) as archive:
        names = sorted(Path(n).name for n in archive.namelist() if n.startswith("ONNXRuntimePackages/"))
    assert [n.split("-")[:2] for n in names] == [["onnxruntime", ORT_VERSION], ["onnxruntime_openvino", version]]


def test_mlflow_missing_is_one_clear_error(run, tmp_path, monkeypatch):
    out, data = copied_output(run, tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # import mlflow now fails as if it were not installed
    with pytest.raises(OliveSystemsError, match=r"pip install olive-systems\[mlflow\]"):
        package(WorkflowOutput(data), [{"type": "Zipfile", "name": "Plain"},
                                       {"type": "AzureMLModels", "config": {"export_in_mlflow_format": True}}], out)
    assert not list(out.glob("*.zip")) and not (out / "azureml").exists()  # refused before anything was written
    with pytest.raises(OliveSystemsError, match=r"pip install olive-systems\[mlflow\]"):  # the engine may ask first
        check_packaging({"type": "Zipfile", "config": {"export_in_mlflow_format": True}})
    check_packaging([{"type": "Zipfile"}, {"type": "AzureMLData", "config": {"export_in_mlflow_format": False}}])


@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install olive-systems[mlflow])")
def test_mlflow_models_load_back_and_predict(run, tmp_path):
    import mlflow.onnx
    import mlflow.pyfunc
    import onnx
    import onnxruntime as ort

    out, output = run
    with zipfile.ZipFile(out / "WithMlflow.zip") as archive:
        archive.extractall(tmp_path)
    for k, model in enumerate(output.get_output_models(), start=1):
        folder = tmp_path / "CandidateModels" / "cpu-cpu" / f"BestCandidateModel_{k}" / "mlflow_model"
        proto = mlflow.onnx.load_model(str(folder))
        original = onnx.load(model.model_path).graph
        assert [i.name for i in proto.graph.input] == [i.name for i in original.input]
        assert [n.op_type for n in proto.graph.node] == [n.op_type for n in original.node]
        flavor = mlflow.models.Model.load(str(folder / "MLmodel")).flavors["onnx"]
        settings = model.get_inference_config()
        assert flavor["providers"] == [p[0] for p in settings["execution_provider"]]
        expected = dict(settings["session_options"])
        if "execution_mode" in expected:
            expected["execution_mode"] = ["sequential", "parallel"][expected["execution_mode"]]
        assert (flavor.get("onnx_session_options") or {}) == expected
        assert f"onnxruntime=={ORT_VERSION}" in (folder / "requirements.txt").read_text()
        feed = {"input_ids": np.full((2, 6), 7, np.int64), "attention_mask": np.ones((2, 6), np.int64),
                "token_type_ids": np.zeros((2, 6), np.int64)}
        predicted = mlflow.pyfunc.load_model(str(folder)).predict(feed)
        direct = ort.InferenceSession(model.model_path, providers=["CPUExecutionProvider"]).run(["last_hidden_state"], feed)[0]
        assert predicted["last_hidden_state"].shape == (2, 6, 32)
        np.testing.assert_allclose(predicted["last_hidden_state"], direct, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not HAS_MLFLOW, reason="mlflow is not installed (pip install olive-systems[mlflow])")
@pytest.mark.parametrize("kind", ["AzureMLModels", "AzureMLData"])
def test_azureml_assets_with_mlflow_format(kind, run, tmp_path):
    pytest.importorskip("azure.ai.ml")
    from azure.ai.ml import load_data, load_model

    out, data = copied_output(run, tmp_path)
    output = WorkflowOutput(data)
    written = package(output, {"type": kind, "name": "m", "config": {"export_in_mlflow_format": True}}, out)
    assert [p.name for p in written] == ["m_cpu-cpu_1.yaml", "m_cpu-cpu_2.yaml"]
    for path, model in zip(written, output.get_output_models()):
        mlflow_folder = candidate_folder(model) / "mlflow_model"
        assert (mlflow_folder / "MLmodel").is_file() and (mlflow_folder / "model.onnx").is_file()
        if kind == "AzureMLModels":
            loaded = load_model(path)
            assert loaded.type == "mlflow_model" and Path(loaded.path) == mlflow_folder
        else:
            loaded = load_data(path)
            assert loaded.type == "uri_folder" and Path(loaded.path) == candidate_folder(model)
