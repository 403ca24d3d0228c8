"""Model references: what a pass takes and gives, and how a model is hashed, loaded and copied.

A model is always a folder. An ONNX model folder holds `model.onnx` beside the tokenizer and
config files carried over from the Hugging Face input, so every output is directly loadable.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

ONNX_FILE = "model.onnx"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".onnx.data", ".h5", ".msgpack")

# Standard Hugging Face tasks: which Auto class loads them and what their ONNX outputs are.
HF_TASKS = {
    "feature-extraction": ("AutoModel", {"last_hidden_state": {0: "batch_size", 1: "sequence_length"}}),
    "sentence-similarity": ("AutoModel", {"last_hidden_state": {0: "batch_size", 1: "sequence_length"}}),
    "text-classification": ("AutoModelForSequenceClassification", {"logits": {0: "batch_size"}}),
    "token-classification": ("AutoModelForTokenClassification", {"logits": {0: "batch_size", 1: "sequence_length"}}),
    "fill-mask": ("AutoModelForMaskedLM", {"logits": {0: "batch_size", 1: "sequence_length"}}),
    "question-answering": (
        "AutoModelForQuestionAnswering",
        {"start_logits": {0: "batch_size", 1: "sequence_length"}, "end_logits": {0: "batch_size", 1: "sequence_length"}},
    ),
}


@dataclass
class ModelRef:
    """A model folder plus what the engine knows about it. Serializable to and from JSON."""

    type: str  # "HfModel" or "OnnxModel"
    path: str  # the model folder
    hash: str  # sha256 over the folder's files (and the model script)
    task: str | None = None
    model_script: str | None = None
    io_config: dict | str | None = None
    dummy_inputs_func: str | None = None
    inference_settings: dict | None = None
    attributes: dict = field(default_factory=dict)
    # The registered AzureML asset (azureml:NAME:VERSION, a registry model or datastore path) this exact
    # folder was downloaded from: an AzureML job mounts it instead of uploading the folder. relocated()
    # drops it, since a relocated model is another folder.
    source_reference: str | None = None

    @property
    def onnx_path(self) -> Path:
        return Path(self.path) / ONNX_FILE

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelRef":
        return cls(**data)

    def relocated(self, path: Path | str, **changes) -> "ModelRef":
        data = self.to_dict()
        data.update(path=str(path), source_reference=None)
        data.update(changes)
        return ModelRef.from_dict(data)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)


def folder_sha256(folder: Path, extra: bytes = b"") -> str:
    """Content hash of a folder: relative names and file contents, independent of its location."""
    digest = hashlib.sha256()
    for path in folder_files(folder):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(file_sha256(path).encode() + b"\0")
    digest.update(extra)
    return digest.hexdigest()


def copy_side_files(src_folder: Path, dst_folder: Path) -> None:
    """Carry tokenizer, config and other non-weight files over to a new model folder."""
    for path in folder_files(src_folder):
        if path.name.endswith(WEIGHT_SUFFIXES):
            continue
        target = dst_folder / path.relative_to(src_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible (same file system, instant); copy otherwise."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def copy_tree(src: Path, dst: Path) -> None:
    for path in folder_files(src):
        link_or_copy(path, dst / path.relative_to(src))


def load_hf_model(ref: ModelRef):
    """Load a Hugging Face model for its task (torch and transformers are imported only here)."""
    import transformers

    auto_class, _ = HF_TASKS.get(ref.task or "feature-extraction", HF_TASKS["feature-extraction"])
    model = getattr(transformers, auto_class).from_pretrained(ref.path)
    model.eval()
    return model


def model_input_names(folder: Path) -> list[str]:
    """The tokenizer's input names (input_ids, attention_mask, token_type_ids, ...)."""
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(folder).model_input_names)
