"""Olive's names and defaults, and what olive-systems calls them (the translation's tables)."""

# Olive's spelling of a value that means "search this option" / "use the default".
SEARCHABLE = "SEARCHABLE_VALUES"
DEFAULT_VALUE = "DEFAULT_VALUE"
# Olive's name for the data config made from hf_config.dataset (oldest generation).
INPUT_MODEL_DATA = "__input_model_data_config__"

ENGINE_KEYS = {"search_strategy", "evaluator", "host", "target", "cache_dir", "output_dir", "output_name",
               "evaluate_input_model", "clean_cache", "clean_evaluation_cache", "log_severity_level",
               "ort_log_severity_level", "ort_py_log_severity_level", "log_to_file", "packaging_config",
               "execution_providers", "plot_pareto_frontier", "enable_shared_cache", "cache_config", "no_artifacts"}
MODEL_TYPES = {"hfmodel": "HfModel", "hfmodelhandler": "HfModel", "pytorchmodel": "PyTorchModel",
               "pytorchmodelhandler": "PyTorchModel", "onnxmodel": "OnnxModel", "onnxmodelhandler": "OnnxModel"}
OLIVE_ONLY_MODEL_TYPES = {"ONNXModel", "HFModel", "PytorchModel", "HfModelHandler", "PyTorchModelHandler",
                          "ONNXModelHandler", "OptimumModel", "OpenVINOModel", "CompositeModel", "DistributedHfModel",
                          "DistributedOnnxModel", "SNPEModel", "TensorFlowModel", "QNNModel"}
SYSTEM_TYPES = {"LocalSystem": "LocalSystem", "Docker": "DockerSystem", "DockerSystem": "DockerSystem",
                "PythonEnvironment": "VenvSystem", "AzureML": "AzureMLSystem", "AzureMLSystem": "AzureMLSystem",
                "VenvSystem": "VenvSystem"}
DEVICE_EPS = {"cpu": ["CPUExecutionProvider"], "gpu": ["CUDAExecutionProvider"], "npu": ["QNNExecutionProvider"]}
# Olive pass -> the native pass (None: handled on its own, OnnxQuantization).
PASS_RENAMES = {"OrtPerfTuning": "OrtSessionParamsTuning", "OnnxQuantization": None}
PASS_SUGGESTIONS = {
    "IncQuantization": "OnnxStaticQuantization / OnnxDynamicQuantization",
    "IncStaticQuantization": "OnnxStaticQuantization", "IncDynamicQuantization": "OnnxDynamicQuantization",
    "OnnxPeepholeOptimizer": "OrtTransformersOptimization (ONNX Runtime applies peephole fusions when it loads a model)",
    "OrtMixedPrecision": "OnnxFloatToFloat16 with op_block_list", "GptqQuantizer": "OnnxGptqQuantization",
    "AutoAWQQuantizer": "OnnxWeightOnlyQuantization with algorithm: awq", "OptimumConversion": "OnnxConversion",
    "OnnxOpVersionConversion": "OnnxConversion with target_opset",
}
# Options Olive spells differently: native pass -> {Olive name: native name}.
OPTION_RENAMES = {"OrtSessionParamsTuning": {"intra_thread_num_list": "intra_op_thread_num_list",
                                             "inter_thread_num_list": "inter_op_thread_num_list"}}
# Options whose value here is what olive-systems does anyway (key -> accepted values).
DEFAULT_OPTIONS = {
    "save_as_external_data": [False], "all_tensors_to_one_file": [True], "external_data_name": [None],
    "size_threshold": [1024], "convert_attribute": [False], "dynamic": [True], "device": ["cpu"],
    "use_gqa": [False], "input_int32": [False], "force_fp32_ops": [None], "force_fp32_nodes": [None],
    "force_fp16_inputs": [None], "clean_run_cache": [False], "disable_search": [True, False],
    # ONNX Runtime's quant_pre_process (Olive's default true): the quantizers here run on the model as given.
    "quant_preprocess": [True, False],
    "min_positive_val": [1e-7], "max_finite_val": [1e4], "disable_shape_infer": [False],
    "use_symbolic_shape_infer": [True], "merge_adapter_weights": [False], "save_metadata_for_token_generation": [False],
}
# Where Olive's default for an option left out differs from olive-systems': written into the recipe,
# so that a config means what it meant in Olive.
OLIVE_DEFAULTS = {"OnnxStaticQuantization": {"activation_type": "QInt8"}, "OnnxFloatToFloat16": {"keep_io_types": False}}
# What to use for a pass option olive-systems does not have (beyond its list of options).
OPTION_HINTS = {
    "nodes_to_quantize": "use op_types_to_quantize, or nodes_to_exclude for the nodes to keep in float",
    "input_names": "the inputs come from the model (or a data_config)",
    "input_shapes": "give a data_config, or dummy_sequence_length",
    "use_external_data_format": "external data is written by itself for models over 1.8 GiB",
    "algo_config": "use the algorithm's own options (block_size, is_symmetric, accuracy_level)",
}
STATIC_ONLY = {"quant_format", "activation_type", "calibrate_method", "data_config", "max_calibration_samples",
               "symbolic_shape_inference"}
# Metric sub-type names of Olive's torch_metrics / huggingface_metrics backends -> native names.
SUB_TYPE_ALIASES = {"accuracy": {"f1_score": "f1", "accuracy": "accuracy_score"}}
ACCEPTED_DEFAULTS = {  # top-level / engine keys whose value here means "as olive-systems does"
    "clean_evaluation_cache": [False], "ort_log_severity_level": [3], "ort_py_log_severity_level": [3],
    "log_to_file": [False], "plot_pareto_frontier": [False], "enable_shared_cache": [False], "no_artifacts": [False],
    "workflow_id": ["default_workflow"], "workflow_host": [None], "auto_optimizer_config": [None],
    "execution_providers": [None], "verbose": [False], "cache_config": [None],
}
UNSUPPORTED_TOP = {
    "workflow_id": "olive-systems keys its cache by content, not by workflow; remove workflow_id "
                  "(give each run its own engine.output_dir)",
    "workflow_host": "run olive-systems on that machine, or make an AzureMLSystem the target",
    "auto_optimizer_config": "list the passes, or use `olive-systems auto-opt`",
    "clean_evaluation_cache": "use clean_cache (or `olive-systems cache clear`)",
    "ort_log_severity_level": "remove it: ONNX Runtime logs errors only; --verbose shows more",
    "ort_py_log_severity_level": "remove it: ONNX Runtime logs errors only; --verbose shows more",
    "log_to_file": "remove it and redirect the output of olive-systems run",
    "plot_pareto_frontier": "remove it: report.html in the output folder plots the candidates",
    "enable_shared_cache": "use engine.shared_cache: {container_name: ..., account_name: ...}",
    "cache_config": "use engine.cache_dir / clean_cache / shared_cache",
    "no_artifacts": "remove it",
    "verbose": "use olive-systems run --verbose",
}
