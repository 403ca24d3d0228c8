"""ModelBuilder: onnxruntime-genai's model builder turns a Hugging Face decoder into an optimized
ONNX model (GroupQueryAttention, fused QKV, MatMulNBits) with genai_config.json beside it.

The builder in onnxruntime-genai 0.18 imports names only transformers 5 has, while olive-systems
keeps transformers 4.57 (its BERT exports fuse fully; 5.x exports fuse only in part). So this pass
runs the builder in a tool environment that pins transformers 5 over the host's packages
(olive_systems.toolenv), with no system for the user to declare."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from ..errors import PassError
from ..models import ModelRef, copy_side_files, folder_sha256, is_generative
from ..toolenv import tool_python
from .base import Pass, PassContext

BUILDER_PINS = ["transformers==5.24.0", "huggingface-hub==2.4.0", "tokenizers==0.23.3"]
_EXECUTION_PROVIDERS = {"CPUExecutionProvider": "cpu", "CUDAExecutionProvider": "cuda", "DmlExecutionProvider": "dml",
                        "WebGpuExecutionProvider": "webgpu", "NvTensorRTRTXExecutionProvider": "NvTensorRtRtx"}


class ModelBuilder(Pass):
    description = "onnxruntime-genai's model builder: a Hugging Face decoder -> an optimized genai ONNX folder."
    input_types = ("HfModel",)
    depends_on = ("onnxruntime-genai", "onnxruntime", "onnx", "torch")
    accelerator_dependent = True
    config_schema = {
        "precision": {"enum": ["fp32", "fp16", "bf16", "int8", "int4"], "default": "int4"},
        "int4_block_size": {"enum": [16, 32, 64, 128, 256], "default": 32,
                            "description": "MatMulNBits block size: a power of two from 16 to 256"},
        "int4_accuracy_level": {"enum": [None, 0, 1, 2, 3, 4], "default": None,
                                "description": "minimum MatMul accuracy: 4 = int8 compute (the builder's CPU default), 1 = fp32"},
        "int4_is_symmetric": {"type": "boolean", "default": True},
        "int4_algo_config": {"enum": ["default", "rtn", "k_quant"], "default": "default"},
        "exclude_embeds": {"type": "boolean", "default": False},
        "exclude_lm_head": {"type": "boolean", "default": False},
        "enable_cuda_graph": {"type": "boolean", "default": False},
        "extra_options": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]},
                          "default": {}, "description": "further builder --extra_options, passed as given"},
    }

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        if not is_generative(model.task):
            raise PassError(f"ModelBuilder builds decoders; input_model.task is '{model.task}'",
                            "use task text-generation-with-past, or OnnxConversion for other models")
        provider = ctx.accelerator.execution_provider
        if provider not in _EXECUTION_PROVIDERS:
            raise PassError(f"the model builder has no target for {provider}", f"use one of {sorted(_EXECUTION_PROVIDERS)}")
        # the builder's own option names (its int4_ forms are deprecated and not all honoured)
        options = {"block_size": config["int4_block_size"], "is_symmetric": config["int4_is_symmetric"],
                   "algo_config": config["int4_algo_config"], "exclude_embeds": config["exclude_embeds"],
                   "exclude_lm_head": config["exclude_lm_head"], "enable_cuda_graph": config["enable_cuda_graph"],
                   **config["extra_options"]}
        if config["int4_accuracy_level"] is not None:
            options["accuracy_level"] = config["int4_accuracy_level"]
        python = tool_python(BUILDER_PINS, ctx.log)
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as scratch:
            command = [str(python), "-m", "onnxruntime_genai.models.builder", "-m", model.path, "-i", model.path,
                       "-o", str(out_dir), "-p", config["precision"], "-e", _EXECUTION_PROVIDERS[provider],
                       "-c", scratch, "--extra_options",
                       *[f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in options.items()]]
            done = subprocess.run(command, capture_output=True, text=True, env=_quiet_env())
        if done.returncode != 0 or not (out_dir / "model.onnx").is_file():
            lines = [line for line in (done.stderr + done.stdout).splitlines() if line.strip()]
            cause = next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else "no output")
            raise PassError(f"the model builder failed: {cause.strip()}", "see the log tail; check precision and options")
        # The input folder's tokenizer files are the ones checked against transformers (a GGUF's
        # are repaired when it is read): they replace whatever the builder's transformers wrote.
        copy_side_files(Path(model.path), out_dir)
        return ModelRef(type="OnnxModel", path=str(out_dir), hash=folder_sha256(out_dir), task=model.task,
                        attributes={"model_builder": {"precision": config["precision"], "block_size": config["int4_block_size"]},
                                    "decoder": {"with_past": True}})


def _quiet_env() -> dict:
    import os

    return {**os.environ, "TQDM_DISABLE": "1", "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
