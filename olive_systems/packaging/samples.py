"""SampleCode/: Python, C++ and C# that run the best ONNX candidate with its recommended settings.

The templates in sample_code/ (package data) get the candidate's path in the zip, its execution
provider and session options. The Python sample reads inference_config.json at run time; C++ and
C# have no JSON parser at hand, so their settings are written into the code here.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from ..output import ModelOutput

# zip path -> template in sample_code/
SAMPLE_FILES = {
    "README.md": "README.md.tmpl",
    "Python/run_model.py": "python/run_model.py.tmpl",
    "Cpp/run_model.cpp": "cpp/run_model.cpp.tmpl",
    "Cpp/CMakeLists.txt": "cpp/CMakeLists.txt.tmpl",
    "CSharp/Program.cs": "csharp/Program.cs.tmpl",
    "CSharp/RunModel.csproj": "csharp/RunModel.csproj.tmpl",
}
GRAPH_OPTIMIZATION_LEVELS = {0: "ORT_DISABLE_ALL", 1: "ORT_ENABLE_BASIC", 2: "ORT_ENABLE_EXTENDED", 99: "ORT_ENABLE_ALL"}
EXECUTION_MODES = {0: "ORT_SEQUENTIAL", 1: "ORT_PARALLEL"}
# The NuGet package of each Python ONNX Runtime distribution (Intel versions its OpenVINO package apart).
NUGET_PACKAGES = {"onnxruntime": "Microsoft.ML.OnnxRuntime", "onnxruntime-gpu": "Microsoft.ML.OnnxRuntime.Gpu",
                  "onnxruntime-directml": "Microsoft.ML.OnnxRuntime.DirectML",
                  "onnxruntime-openvino": "Intel.ML.OnnxRuntime.OpenVino"}
# Providers the C++ API configures through a V2 options struct of the C API.
CPP_V2_PROVIDERS = {"CUDAExecutionProvider": "CUDA", "TensorrtExecutionProvider": "TensorRT"}


def render_samples(best: ModelOutput | None, candidate: str, runtime: dict | None) -> dict[str, str]:
    """zip path (under SampleCode/) -> file text; only a README when no candidate is an ONNX model."""
    if best is None:
        return {"README.md": "# Sample code\n\nNo candidate of this run is an ONNX model, and the samples run ONNX models "
                             "with ONNX Runtime: there is nothing to show here.\n"}
    settings = best.get_inference_config() or {}
    provider, provider_options = _provider(settings, best.from_execution_provider())
    session_options = {k: v for k, v in (settings.get("session_options") or {}).items() if v is not None}
    runtime = runtime or {"package": "onnxruntime", "version": ""}
    values = {
        "__CANDIDATE__": candidate,
        "__MODEL_PATH__": f"{candidate}/model.onnx",
        "__EXECUTION_PROVIDER__": provider + (f" {json.dumps(provider_options)}" if provider_options else ""),
        "__SESSION_OPTIONS__": json.dumps(session_options) if session_options else "ONNX Runtime's defaults",
        "__ORT_PACKAGE__": runtime["package"],
        "__ORT_VERSION__": runtime["version"],
        "__NUGET_PACKAGE__": NUGET_PACKAGES.get(runtime["package"], "Microsoft.ML.OnnxRuntime"),
        # Intel's OpenVINO NuGet package does not follow the Python package's versions: leave it to the reader.
        "__NUGET_VERSION__": runtime["version"] if runtime["package"] != "onnxruntime-openvino" else "*",
    }
    code = {
        "run_model.cpp.tmpl": _cpp_session_code(session_options, provider, provider_options),
        "Program.cs.tmpl": _csharp_session_code(session_options, provider, provider_options),
    }
    templates = resources.files(__package__).joinpath("sample_code")
    rendered = {}
    files = dict(SAMPLE_FILES)
    if is_generative_candidate(best):  # a decoder folder also gets the onnxruntime-genai chat sample
        files["Python/generate.py"] = "python/generate.py.tmpl"
    if (best.model_config.get("config", {}).get("model_attributes") or {}).get("adapters"):  # serving adapters: how to switch
        files["Python/switch_adapters.py"] = "python/switch_adapters.py.tmpl"
    for target, source in files.items():
        text = templates.joinpath(source).read_text(encoding="utf-8")
        text = text.replace("__SESSION_OPTIONS_CODE__", code.get(source.rsplit("/", 1)[-1], ""))
        for key, value in values.items():
            text = text.replace(key, value)
        rendered[target] = text
    return rendered


def is_generative_candidate(model: ModelOutput) -> bool:
    from ..llm.genai_folder import is_genai_folder

    path = Path(model.model_path)
    return is_genai_folder(path if path.is_dir() else path.parent)


def _provider(settings: dict, fallback: str) -> tuple[str, dict]:
    entries = settings.get("execution_provider") or [[fallback, {}]]
    entry = entries[0]
    if isinstance(entry, (list, tuple)):
        return entry[0], {str(k): _option_text(v) for k, v in (entry[1] if len(entry) > 1 and entry[1] else {}).items()}
    return entry, {}


def _option_text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _literal(text: str) -> str:
    """A C++ / C# string literal (JSON's escapes are valid in both)."""
    return json.dumps(str(text))


def _short_name(provider: str) -> str:
    return provider[:-len("ExecutionProvider")] if provider.endswith("ExecutionProvider") else provider


def _cpp_session_code(options: dict, provider: str, provider_options: dict) -> str:
    lines = []
    if "intra_op_num_threads" in options:
        lines.append(f"options.SetIntraOpNumThreads({int(options['intra_op_num_threads'])});")
    if "inter_op_num_threads" in options:
        lines.append(f"options.SetInterOpNumThreads({int(options['inter_op_num_threads'])});")
    if "execution_mode" in options:
        lines.append(f"options.SetExecutionMode({EXECUTION_MODES[int(options['execution_mode'])]});")
    if "graph_optimization_level" in options:
        lines.append(f"options.SetGraphOptimizationLevel({GRAPH_OPTIMIZATION_LEVELS[int(options['graph_optimization_level'])]});")
    for key, value in (options.get("extra_session_config") or {}).items():
        lines.append(f"options.AddConfigEntry({_literal(key)}, {_literal(value)});")
    pairs = ", ".join(f"{{{_literal(k)}, {_literal(v)}}}" for k, v in provider_options.items())
    if provider == "CPUExecutionProvider":
        lines.append("// CPUExecutionProvider is ONNX Runtime's default: nothing to append.")
    elif provider == "OpenVINOExecutionProvider":
        lines += [f"const std::unordered_map<std::string, std::string> provider_options{{{pairs}}};",
                  "options.AppendExecutionProvider_OpenVINO_V2(provider_options);"]
    elif provider in CPP_V2_PROVIDERS:
        kind = CPP_V2_PROVIDERS[provider]
        struct = f"Ort{kind}ProviderOptionsV2"
        lines += ["const OrtApi& api = Ort::GetApi();",
                  f"{struct}* provider_options = nullptr;",
                  f"Ort::ThrowOnError(api.Create{kind}ProviderOptions(&provider_options));",
                  f"std::unique_ptr<{struct}, decltype(api.Release{kind}ProviderOptions)> release(",
                  f"    provider_options, api.Release{kind}ProviderOptions);"]
        if provider_options:
            keys = ", ".join(_literal(k) for k in provider_options)
            values = ", ".join(_literal(v) for v in provider_options.values())
            lines += [f"const char* keys[] = {{{keys}}};",
                      f"const char* values[] = {{{values}}};",
                      f"Ort::ThrowOnError(api.Update{kind}ProviderOptions(provider_options, keys, values, {len(provider_options)}));"]
        append = "AppendExecutionProvider_CUDA_V2" if kind == "CUDA" else "AppendExecutionProvider_TensorRT_V2"
        lines.append(f"options.{append}(*provider_options);")
    else:
        lines += [f"// The generic append takes the provider's short name ({provider} -> {_short_name(provider)}).",
                  f"const std::unordered_map<std::string, std::string> provider_options{{{pairs}}};",
                  f"options.AppendExecutionProvider({_literal(_short_name(provider))}, provider_options);"]
    return "\n".join("  " + line for line in lines)


def _csharp_session_code(options: dict, provider: str, provider_options: dict) -> str:
    lines = []
    if "intra_op_num_threads" in options:
        lines.append(f"options.IntraOpNumThreads = {int(options['intra_op_num_threads'])};")
    if "inter_op_num_threads" in options:
        lines.append(f"options.InterOpNumThreads = {int(options['inter_op_num_threads'])};")
    if "execution_mode" in options:
        lines.append(f"options.ExecutionMode = ExecutionMode.{EXECUTION_MODES[int(options['execution_mode'])]};")
    if "graph_optimization_level" in options:
        level = GRAPH_OPTIMIZATION_LEVELS[int(options["graph_optimization_level"])]
        lines.append(f"options.GraphOptimizationLevel = GraphOptimizationLevel.{level};")
    for key, value in (options.get("extra_session_config") or {}).items():
        lines.append(f"options.AddSessionConfigEntry({_literal(key)}, {_literal(value)});")
    dictionary = ("new Dictionary<string, string> { "
                  + ", ".join(f"[{_literal(k)}] = {_literal(v)}" for k, v in provider_options.items()) + " }")
    if provider == "CPUExecutionProvider":
        lines.append("// CPUExecutionProvider is ONNX Runtime's default: nothing to append.")
    elif provider == "CUDAExecutionProvider":
        lines += ["using var cudaOptions = new OrtCUDAProviderOptions();  // ONNX Runtime copies them on append",
                  f"cudaOptions.UpdateOptions({dictionary});",
                  "options.AppendExecutionProvider_CUDA(cudaOptions);"]
    elif provider == "TensorrtExecutionProvider":
        lines += ["using var tensorrtOptions = new OrtTensorRTProviderOptions();  // ONNX Runtime copies them on append",
                  f"tensorrtOptions.UpdateOptions({dictionary});",
                  "options.AppendExecutionProvider_Tensorrt(tensorrtOptions);"]
    elif provider == "OpenVINOExecutionProvider" and set(provider_options) <= {"device_type"}:
        lines.append(f"options.AppendExecutionProvider_OpenVINO({_literal(provider_options.get('device_type', ''))});")
    elif provider == "DmlExecutionProvider" and set(provider_options) <= {"device_id"}:
        lines.append(f"options.AppendExecutionProvider_DML({int(provider_options.get('device_id', 0))});")
    else:
        lines += [f"// The generic append takes the provider's short name ({provider} -> {_short_name(provider)}).",
                  f"options.AppendExecutionProvider({_literal(_short_name(provider))}, {dictionary});"]
    return "\n".join("        " + line for line in lines)
