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
ONNX_DATA_FILE = "model.onnx.data"  # the one external data file every model this package writes uses
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".onnx.data", ".onnx_data", ".data",
                   ".h5", ".msgpack")
# Over this a model is written with external data: protobuf cannot serialize a message of 2 GiB or more.
EXTERNAL_DATA_THRESHOLD = int(1.8 * 2**30)

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
    # Decoders: their ONNX inputs and outputs (KV cache included) come from llm.spec.DecoderSpec.
    "text-generation": ("AutoModelForCausalLM", None),
    "text-generation-with-past": ("AutoModelForCausalLM", None),
}
# Olive's and Optimum's other names for the same generative tasks.
TASK_ALIASES = {"causal-lm": "text-generation", "causal-lm-with-past": "text-generation-with-past",
                "text-generation-with-kv-cache": "text-generation-with-past"}
GENERATIVE_TASKS = ("text-generation", "text-generation-with-past")


def canonical_task(task: str | None) -> str | None:
    return TASK_ALIASES.get(task, task)


def is_generative(task: str | None) -> bool:
    return canonical_task(task) in GENERATIVE_TASKS


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
    """Carry tokenizer, config and other non-weight files over to a new model folder: never the
    weights, nor an ONNX model's external data whatever its name (the new model writes its own)."""
    external = set(external_data_files(src_folder))
    for path in folder_files(src_folder):
        relative = path.relative_to(src_folder).as_posix()
        if path.name.endswith(WEIGHT_SUFFIXES) or relative in external:
            continue
        target = dst_folder / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link when possible (same file system, instant); copy otherwise. External data (*.data) is
    always copied: onnx >= 1.23 refuses to load a data file with more than one hard link."""
    if src.name.endswith(".data"):
        copy_file(src, dst)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


_FICLONE = 0x40049409  # Linux ioctl: share the source's blocks copy-on-write (btrfs, XFS, overlayfs on those)


def copy_file(src: Path, dst: Path) -> None:
    """A file of its own (never a hard link): a reflink where the file system has them, else a copy."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    try:
        import fcntl

        with open(src, "rb") as source, open(dst, "wb") as target:
            fcntl.ioctl(target.fileno(), _FICLONE, source.fileno())
        shutil.copystat(src, dst)
        return
    except (ImportError, OSError):  # no reflinks here (another FS, not Linux): a plain copy
        pass
    shutil.copy2(src, dst)


def copy_tree(src: Path, dst: Path) -> None:
    """Every file of a model folder: hard links where allowed, copies of external data."""
    external = set(external_data_files(src))
    for path in folder_files(src):
        relative = path.relative_to(src).as_posix()
        if relative in external or path.name.endswith(".data"):
            copy_file(path, dst / relative)
        else:
            link_or_copy(path, dst / relative)


def publish_folder(tmp: Path, final: Path) -> Path:
    """Rename a finished temp folder into place. When another process published the same folder first
    (same content, same name), its copy stands and ours is dropped."""
    final.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def copy_onnx_model(src_folder: Path, dst_folder: Path) -> None:
    """model.onnx and its external data, under the names model.onnx refers to, into a folder of its own
    (a private copy a tool may write scratch files beside): the data files are copies, never links."""
    dst_folder.mkdir(parents=True, exist_ok=True)
    link_or_copy(src_folder / ONNX_FILE, dst_folder / ONNX_FILE)
    for relative in external_data_files(src_folder, [ONNX_FILE]):
        copy_file(src_folder / relative, dst_folder / relative)


# ---- ONNX files with and without external data ----

def _tensors(graph):
    """Every TensorProto of a graph and its subgraphs: initializers and constant attributes."""
    for tensor in graph.initializer:
        yield tensor
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("sparse_tensor"):
                yield attribute.sparse_tensor.values
                yield attribute.sparse_tensor.indices
            if attribute.HasField("g"):
                yield from _tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _tensors(subgraph)


# Files that never hold a model's external tensors (tokenizer, configs, templates, adapters, notes).
SIDE_FILE_SUFFIXES = {".json", ".txt", ".jinja", ".md", ".model", ".onnx_adapter", ".py", ".yaml"}


def external_data_files(folder: Path, onnx_names: list[str] | None = None) -> list[str]:
    """Files of the folder (relative POSIX paths) that its ONNX model(s) read as external data."""
    import onnx

    folder = Path(folder)
    names = onnx_names if onnx_names is not None else [p.relative_to(folder).as_posix()
                                                       for p in folder.rglob("*.onnx") if p.is_file()]
    others = [p for p in folder.rglob("*") if p.is_file() and p.suffix != ".onnx"]
    if all(p.suffix in SIDE_FILE_SUFFIXES for p in others):  # nothing that could hold tensors: no need to parse
        return []
    found = set()
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception:  # not an ONNX model after all: it refers to nothing
            continue
        for tensor in _tensors(proto.graph):
            if tensor.data_location != onnx.TensorProto.EXTERNAL:
                continue
            location = next((item.value for item in tensor.external_data if item.key == "location"), None)
            if not location:
                continue
            target = (path.parent / location).resolve()
            try:
                relative = target.relative_to(folder.resolve()).as_posix()
            except ValueError:  # outside the folder: onnx refuses it anyway
                continue
            if target.is_file():
                found.add(relative)
    return sorted(found)


def has_external_data(folder: Path) -> bool:
    """Whether the folder's model.onnx keeps tensors in external data files."""
    return bool(external_data_files(Path(folder), [ONNX_FILE]))


def load_onnx(folder: Path, load_external_data: bool = True):
    """The folder's model.onnx as a ModelProto, its external data read in (unless asked not to)."""
    import onnx

    return onnx.load(str(Path(folder) / ONNX_FILE), load_external_data=load_external_data)


def _too_big_for_one_file(model_proto, size_threshold: int) -> bool:
    try:
        return model_proto.ByteSize() > size_threshold
    except Exception:  # protobuf refuses to even size it: certainly too big
        return True


def save_onnx(model_proto, folder: Path, external_data: bool | None = None,
              size_threshold: int = EXTERNAL_DATA_THRESHOLD) -> bool:
    """Write model_proto as folder/model.onnx. Its tensors go to folder/model.onnx.data when
    external_data is true (pass "the input had external data"), or when the model is over
    size_threshold bytes (protobuf's 2 GiB limit). Returns whether a data file was written.

    model_proto must hold its tensors (loaded with external data); saving with external data
    moves them out of it, so reload the folder to read them again."""
    import onnx

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path, data = folder / ONNX_FILE, folder / ONNX_DATA_FILE
    for stale in (path, data):  # onnx appends to an existing data file
        if stale.exists() or stale.is_symlink():
            stale.unlink()
    external = bool(external_data) or _too_big_for_one_file(model_proto, size_threshold)
    if not external:
        onnx.save_model(model_proto, str(path))
        return False
    onnx.save_model(model_proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=ONNX_DATA_FILE, size_threshold=1024, convert_attribute=True)
    return data.is_file()


def load_hf_model(ref: ModelRef, **kwargs):
    """Load a Hugging Face model for its task (torch and transformers are imported only here)."""
    import transformers

    from .errors import RecipeError

    task = canonical_task(ref.task or "feature-extraction")
    if task not in HF_TASKS:  # never fall back to a model without its head
        raise RecipeError(f"input_model.task '{ref.task}' is not a task olive-systems knows",
                          f"use one of {sorted(HF_TASKS)}")
    class_name = (ref.attributes or {}).get("model_class") or HF_TASKS[task][0]
    model_class = getattr(transformers, class_name, None)
    if model_class is None:  # input_model.model_class names a class this transformers does not have
        raise RecipeError(f"input_model.model_class '{class_name}' is not a class of transformers {transformers.__version__}",
                          "give a transformers model class (e.g. BertForSequenceClassification), or drop model_class "
                          "to load the task's Auto class")
    model = model_class.from_pretrained(ref.path, **(kwargs or {}))
    adapter = (ref.attributes or {}).get("adapter_path")
    if adapter:  # a LoRA pass's output: the base with its peft adapter, kept unmerged (exports keep LoRA apart)
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(Path(ref.path) / adapter))
    model.eval()
    return model


def model_input_names(folder: Path) -> list[str]:
    """The tokenizer's input names (input_ids, attention_mask, token_type_ids, ...)."""
    from transformers import AutoTokenizer

    return list(AutoTokenizer.from_pretrained(folder).model_input_names)
