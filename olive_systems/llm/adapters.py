"""LoRA adapters: peft adapter folders in; weight files for ONNX models whose LoRA weights are inputs out.

One layout serves every format. An ONNX model made by the ExtractAdapters pass computes each LoRA as
``x @ A + (x @ B)`` beside the base MatMul, A and B being graph inputs, so a weight file holds, per
adapted module, exactly the tensors that model takes:

* ``<module>.lora_A.weight``: float [in_features, r], peft's lora_A transposed;
* ``<module>.lora_B.weight``: float [r, out_features], peft's lora_B transposed and multiplied by the
  module's scaling (lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora; rank_pattern and
  alpha_pattern honoured), so adapters with different alphas and ranks run on one graph.

``<module>`` is peft's own name for the module (``base_model.model.model.layers.0.self_attn.q_proj``),
so the names are those of the adapter's ``adapter_model.safetensors``.

int4 (block-wise, ``quantize_int4``): each weight W [K, N] above is replaced by three tensors in
ONNX Runtime's MatMulNBits layout, so an ONNX model extracted with int4 serves them directly (its
LoRA MatMuls are MatMulNBits whose weight, scales and zero points are inputs):

* ``<name>.quant``: uint8 [N, ceil(K / block), block / 2]: column n of W in blocks of ``block`` values
  along K (the last block zero-padded), two 4-bit values a byte, the lower nibble first;
* ``<name>.scales``: float32 or float16 (the dtype asked for) [N * ceil(K / block)], row-major [N, blocks];
* ``<name>.zero_points`` (asymmetric only): uint8 [N * ceil(blocks / 2)], row-major [N, blocks] two
  4-bit zero points a byte, the lower nibble first. Symmetric blocks have none: the zero point is 8.

A value dequantizes as ``(q - zero_point) * scale``. K is not stored (the graph's MatMulNBits has it;
``dequantize_int4`` takes it): A has K = in_features, B has K = r. The block size must be a power of
two from 16 to 256 (MatMulNBits' kernels).

Formats: ``pt`` (torch.save of {name: tensor}), ``numpy`` (np.savez, .npz), ``safetensors`` and
``onnx_adapter`` (onnxruntime.AdapterFormat: what ORT's LoraAdapter / RunOptions.add_active_adapter
and onnxruntime-genai's og.Adapters load). Files are written whole or not at all.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PassError, RecipeError

ADAPTER_FORMATS = {"pt": ".pt", "numpy": ".npz", "safetensors": ".safetensors", "onnx_adapter": ".onnx_adapter"}
ADAPTER_DTYPES = ("float32", "float16")
INT4_BLOCK_SIZES = (16, 32, 64, 128, 256)
INT4_MODES = ("symmetric", "asymmetric")
WEIGHTS_STEM = "adapter_weights"  # ExtractAdapters' and extract_adapters' file: adapter_weights<extension>
ADAPTER_CONFIG = "adapter_config.json"
PEFT_WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin")
ADAPTER_SUBFOLDER = "adapter"  # a model folder holding its peft adapter (the LoRA pass's HfModel)
QUANT, SCALES, ZERO_POINTS = ".quant", ".scales", ".zero_points"
SUPPORTED_TYPES = ("lora",)
# peft's names: <module>.lora_A.weight in saved files, <module>.lora_A.<adapter name>.weight in a live model
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<role>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
TYPE_REFUSALS = {
    "dora": "DoRA is not supported: its export rescales the base output by magnitude / ||W + scaling * B @ A|| "
            "(a norm subgraph over a second copy of A and B), and ExtractAdapters rewrites only LoRA's x @ A @ B; "
            "supported: lora",
    "loha": "LoHa is not supported: its export builds the update (w1_a @ w1_b) * (w2_a @ w2_b) as a dense weight "
            "before its MatMul, and ExtractAdapters rewrites only LoRA's x @ A @ B; supported: lora",
}


def lora_name(module: str, role: str) -> str:
    return f"{module}.lora_{role}.weight"


def weights_file_name(fmt: str) -> str:
    return WEIGHTS_STEM + ADAPTER_FORMATS[fmt]


# ---- checks every entry point makes before any work ----

def check_format(fmt: str, argument: str = "adapter_format") -> None:
    if fmt not in ADAPTER_FORMATS:
        raise RecipeError(f"{argument}={fmt!r}: not an adapter format", f"use one of {', '.join(ADAPTER_FORMATS)}")


def check_dtype(dtype: str, argument: str = "dtype") -> None:
    if dtype not in ADAPTER_DTYPES:
        raise RecipeError(f"{argument}={dtype!r}: adapter weights are float32 or float16", "use float32 or float16")


def check_int4(block_size, mode: str, argument: str = "int4_block_size") -> None:
    if isinstance(block_size, bool) or block_size not in INT4_BLOCK_SIZES:
        raise RecipeError(f"{argument}={block_size!r}: the int4 block size must be a power of two from 16 to 256",
                          f"use one of {', '.join(map(str, INT4_BLOCK_SIZES))}")
    if mode not in INT4_MODES:
        raise RecipeError(f"int4_quantization_mode={mode!r}: not a quantization mode", "use symmetric or asymmetric")


def check_adapter_type(adapter_type: str, argument: str = "adapter_type") -> None:
    if adapter_type in SUPPORTED_TYPES:
        return
    why = TYPE_REFUSALS.get(adapter_type, f"'{adapter_type}' is not an adapter type olive-systems knows")
    raise RecipeError(f"{argument}={adapter_type!r}: {why}", "use adapter_type lora")


# ---- peft adapter folders ----

@dataclass
class LoraModule:
    name: str  # peft's module name, e.g. base_model.model.model.layers.0.self_attn.q_proj
    a: np.ndarray  # lora_A, peft layout [r, in_features]
    b: np.ndarray  # lora_B, peft layout [out_features, r]
    scaling: float

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


@dataclass
class PeftAdapter:
    folder: Path
    config: dict
    tensors: dict  # name in adapter_model.* -> float32 numpy array

    @property
    def adapter_type(self) -> str:
        kind = str(self.config.get("peft_type", "")).lower()
        return "dora" if kind == "lora" and self.config.get("use_dora") else kind

    def lora_modules(self) -> list[LoraModule]:
        """The adapted modules, in file order; RecipeError for an adapter this package cannot serve."""
        check_adapter_type(self.adapter_type, f"{self.folder}: peft_type")
        pairs: dict[str, dict] = {}
        other = []
        for name, tensor in self.tensors.items():
            found = LORA_KEY.match(name)
            if found and tensor.ndim == 2:
                pairs.setdefault(found["module"], {})[found["role"]] = tensor
            else:
                other.append(name)
        if other:
            raise RecipeError(f"{self.folder}: the adapter holds weights that are not Linear LoRA pairs "
                              f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): embedding LoRA and "
                              "modules_to_save cannot be served as graph inputs",
                              "train the adapter with target_modules on Linear layers only and no modules_to_save")
        modules = []
        for module, pair in pairs.items():
            if set(pair) != {"A", "B"}:
                missing = "lora_B" if "A" in pair else "lora_A"
                raise RecipeError(f"{self.folder}: {module} has no {missing} weight", "save the adapter again with peft")
            a, b = pair["A"], pair["B"]
            if a.shape[0] != b.shape[1]:
                raise RecipeError(f"{self.folder}: {module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} "
                                  "do not share a rank", "save the adapter again with peft")
            modules.append(LoraModule(module, a, b, lora_scaling(self.config, module, a.shape[0])))
        if not modules:
            raise RecipeError(f"{self.folder}: the adapter holds no LoRA weights", "give a trained peft LoRA adapter")
        return modules


def find_adapter_folder(path: Path | str) -> Path:
    """The peft adapter folder at path: path itself, or its adapter/ subfolder (a model folder holding
    its adapter). RecipeError naming what is missing otherwise."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise RecipeError(f"{folder} is not a folder", "give the folder peft's save_pretrained() wrote")
    for candidate in (folder, folder / ADAPTER_SUBFOLDER):
        if (candidate / ADAPTER_CONFIG).is_file():
            return candidate
    raise RecipeError(f"{folder} is not a peft adapter: it has no {ADAPTER_CONFIG} (nor {ADAPTER_SUBFOLDER}/{ADAPTER_CONFIG})",
                      "give the folder peft's save_pretrained() wrote (adapter_config.json and adapter_model.safetensors)")


def read_adapter_config(folder: Path) -> dict:
    path = folder / ADAPTER_CONFIG
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RecipeError(f"{path} is not readable JSON ({exc})", "save the adapter again with peft") from None
    if not isinstance(config, dict) or "peft_type" not in config:
        raise RecipeError(f"{path} has no peft_type: not a peft adapter config", "save the adapter again with peft")
    return config


def read_peft_adapter(path: Path | str) -> PeftAdapter:
    """A peft adapter folder (or a model folder with adapter/): its config and float32 weights."""
    folder = find_adapter_folder(path)
    config = read_adapter_config(folder)
    adapter = PeftAdapter(folder, config, {})
    check_adapter_type(adapter.adapter_type, f"{folder}: peft_type")
    weights = next((folder / name for name in PEFT_WEIGHT_FILES if (folder / name).is_file()), None)
    if weights is None:
        raise RecipeError(f"{folder} is not a complete peft adapter: it has {ADAPTER_CONFIG} but no "
                          f"{' or '.join(PEFT_WEIGHT_FILES)}", "save the adapter again with peft's save_pretrained()")
    adapter.tensors = _read_tensors(weights)
    return adapter


def _read_tensors(path: Path) -> dict:
    import torch

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
        else:
            tensors = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated or foreign files: the user needs the file and the reason
        raise RecipeError(f"{path} cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
                          "save the adapter again with peft") from None
    return {name: (t.float() if t.is_floating_point() else t).numpy() for name, t in tensors.items()}


def _pattern_value(patterns: dict | None, module: str, default):
    """rank_pattern / alpha_pattern: a key names a module by its name, a dotted suffix of it, or a regex."""
    relative = module.removeprefix("base_model.model.")
    for key, value in (patterns or {}).items():
        if relative == key or relative.endswith("." + key):
            return value
        try:
            if re.fullmatch(rf"(.*\.)?(?:{key})", relative):
                return value
        except re.error:
            continue
    return default


def lora_scaling(config: dict, module: str, rank: int) -> float:
    alpha = float(_pattern_value(config.get("alpha_pattern"), module, config.get("lora_alpha", 8)))
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def served_tensors(adapter: PeftAdapter) -> dict:
    """name -> the float32 tensor an ExtractAdapters model takes (see the module doc: A.T, (s * B).T)."""
    out = {}
    for module in adapter.lora_modules():
        out[lora_name(module.name, "A")] = np.ascontiguousarray(module.a.T, dtype=np.float32)
        out[lora_name(module.name, "B")] = np.ascontiguousarray((module.b * np.float32(module.scaling)).T, dtype=np.float32)
    return out


# ---- dtype and int4 ----

def cast(tensors: dict, dtype: str) -> dict:
    target = np.dtype(dtype)
    return {name: np.ascontiguousarray(t.astype(target)) if t.dtype.kind == "f" else t for name, t in tensors.items()}


def quantize_int4(tensors: dict, block_size: int, mode: str = "symmetric", scale_dtype: str = "float32") -> dict:
    """Each float W [K, N] -> <name>.quant, <name>.scales (scale_dtype)[, <name>.zero_points]: the module
    doc's MatMulNBits layout. Scales are rounded to scale_dtype before the values are quantized, so
    dequantizing with the stored scales is exact to the quantization."""
    check_int4(block_size, mode)
    out = {}
    for name, w in tensors.items():
        quant, scales, zero_points = _quantize_matrix(np.asarray(w, dtype=np.float32), block_size, mode == "symmetric",
                                                      np.dtype(scale_dtype))
        out[name + QUANT], out[name + SCALES] = quant, scales
        if zero_points is not None:
            out[name + ZERO_POINTS] = zero_points
    return out


def _quantize_matrix(w: np.ndarray, block: int, symmetric: bool, scale_dtype):
    k, n = w.shape
    blocks = -(-k // block)
    padded = np.zeros((n, blocks * block), dtype=np.float32)
    padded[:, :k] = w.T
    values = padded.reshape(n, blocks, block)
    if symmetric:
        scale = np.abs(values).max(axis=2) / 7.0
        zero = np.full((n, blocks), 8.0, dtype=np.float32)
    else:
        low, high = np.minimum(values.min(axis=2), 0.0), np.maximum(values.max(axis=2), 0.0)
        scale = (high - low) / 15.0
    scale = scale.astype(scale_dtype).astype(np.float32)  # the scale that will be stored
    safe = np.where(scale > 0, scale, 1.0)
    if not symmetric:
        zero = np.clip(np.round(-low / safe), 0, 15)
    q = np.clip(np.round(values / safe[:, :, None]) + zero[:, :, None], 0, 15).astype(np.uint8)
    quant = (q[:, :, 0::2] | (q[:, :, 1::2] << 4)).astype(np.uint8)
    zero_points = None
    if not symmetric:
        z = zero.astype(np.uint8)
        if blocks % 2:
            z = np.concatenate([z, np.zeros((n, 1), dtype=np.uint8)], axis=1)
        zero_points = np.ascontiguousarray((z[:, 0::2] | (z[:, 1::2] << 4)).reshape(-1))
    return np.ascontiguousarray(quant), np.ascontiguousarray(scale.reshape(-1).astype(scale_dtype)), zero_points


def int4_names(tensors: dict) -> list[str]:
    """The weight names of an int4 tensor dict (those with a .quant tensor)."""
    return [name[: -len(QUANT)] for name in tensors if name.endswith(QUANT)]


def dequantize_int4(tensors: dict, k_sizes: dict, block_size: int) -> dict:
    """The float32 W [K, N] of each int4 weight; k_sizes: name -> K (in_features for A, r for B)."""
    out = {}
    for name in int4_names(tensors):
        quant = tensors[name + QUANT]
        n, blocks, half = quant.shape
        if half * 2 != block_size:
            raise RecipeError(f"{name}: stored with block size {half * 2}, not {block_size}",
                              f"use int4_block_size {half * 2}")
        q = np.stack([quant & 0x0F, quant >> 4], axis=-1).reshape(n, blocks, block_size).astype(np.float32)
        scales = tensors[name + SCALES].astype(np.float32).reshape(n, blocks)
        if name + ZERO_POINTS in tensors:
            packed = tensors[name + ZERO_POINTS].reshape(n, -1)
            zero = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, -1)[:, :blocks].astype(np.float32)
        else:
            zero = np.full((n, blocks), 8.0, dtype=np.float32)
        w = ((q - zero[:, :, None]) * scales[:, :, None]).reshape(n, blocks * block_size)[:, : k_sizes[name]]
        out[name] = np.ascontiguousarray(w.T)
    return out


# ---- files ----

def save_adapter_weights(tensors: dict, path: Path | str, fmt: str) -> Path:
    """Write tensors in fmt at path: a partial file beside it, renamed into place when complete."""
    check_format(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    arrays = {name: np.ascontiguousarray(t) for name, t in tensors.items()}
    try:
        if fmt == "pt":
            import torch

            torch.save({name: torch.from_numpy(t.copy()) for name, t in arrays.items()}, str(partial))
        elif fmt == "numpy":
            with open(partial, "wb") as f:
                np.savez(f, **arrays)
        elif fmt == "safetensors":
            from safetensors.numpy import save_file

            save_file(arrays, str(partial), metadata={"layout": "olive-systems onnx adapter inputs"})
        else:
            import onnxruntime as ort

            adapter = ort.AdapterFormat()
            adapter.set_adapter_version(1)
            adapter.set_model_version(1)
            adapter.set_parameters({name: ort.OrtValue.ortvalue_from_numpy(t) for name, t in arrays.items()})
            adapter.export_adapter(str(partial))
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()
    return path


def load_adapter_weights(path: Path | str) -> dict:
    """name -> numpy array of a file save_adapter_weights wrote (the format from its extension)."""
    path = Path(path)
    fmt = next((f for f, ext in ADAPTER_FORMATS.items() if path.name.endswith(ext)), None)
    if fmt is None or not path.is_file():
        raise RecipeError(f"{path} is not an adapter weights file", f"give a {', '.join(ADAPTER_FORMATS.values())} file")
    if fmt == "pt":
        import torch

        return {name: t.numpy() for name, t in torch.load(str(path), map_location="cpu", weights_only=True).items()}
    if fmt == "numpy":
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        return load_file(str(path))
    import onnxruntime as ort

    adapter = ort.AdapterFormat.read_adapter(str(path))  # its OrtValues point into it: copy while it lives
    values = {name: np.array(value.numpy(), copy=True) for name, value in adapter.get_parameters().items()}
    del adapter
    return values


def adapter_file_tensors(adapter: PeftAdapter, dtype: str = "float32", int4: dict | None = None) -> dict:
    """The tensors a weights file holds for this adapter: served layout, dtype, optionally int4
    ({"block_size", "mode"}; dtype is then the scales' dtype)."""
    tensors = served_tensors(adapter)
    if int4:
        return quantize_int4(tensors, int4["block_size"], int4["mode"], dtype)
    return cast(tensors, dtype)


# ---- naming the LoRA weights of an export ----

def name_lora_weights(onnx_path: Path | str, adapter_path: Path | str) -> int:
    """Give the LoRA weight initializers of an exported model the adapter's names (module doc), in place.

    The TorchScript exporter folds each Linear's transpose into a new initializer named
    onnx::MatMul_<n>; the dynamo exporter keeps <module>.lora_A.<adapter>.weight. Each lora_A is found
    by value (its transpose, exactly as exported, or the weight itself behind a Transpose node), its
    lora_B as the weight of the MatMul its MatMul feeds. Returns how many modules were named;
    PassError when a module of the adapter has no LoRA MatMul pair in the graph."""
    import onnx
    from onnx import numpy_helper

    onnx_path = Path(onnx_path)
    adapter = read_peft_adapter(adapter_path)
    proto = onnx.load(str(onnx_path), load_external_data=False)
    graph = proto.graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    producers = {out: node for node in graph.node for out in node.output}

    def value(tensor):
        return numpy_helper.to_array(tensor, base_dir=str(onnx_path.parent)).astype(np.float32)

    def matmul_weight(name: str):
        """(MatMul node, its weight initializer name, transposed?) for a tensor that is a MatMul's B,
        directly or through a Transpose."""
        for node in consumers.get(name, []):
            if node.op_type == "MatMul" and list(node.input).index(name) == 1:
                return node, False
            if node.op_type == "Transpose" and list(_attr(node, "perm", [1, 0])) == [1, 0]:
                for user in consumers.get(node.output[0], []):
                    if user.op_type == "MatMul" and user.input[1] == node.output[0]:
                        return user, True
        return None, None

    def weight_of(matmul) -> tuple[str | None, bool]:
        source = matmul.input[1]
        if source in initializers:
            return source, False
        node = producers.get(source)
        if node is not None and node.op_type == "Transpose" and node.input[0] in initializers:
            return node.input[0], True
        return None, False

    by_shape: dict[tuple, list[str]] = {}
    for name, tensor in initializers.items():
        if len(tensor.dims) == 2:
            by_shape.setdefault(tuple(tensor.dims), []).append(name)
    renames: dict[str, str] = {}
    named = 0
    for module in adapter.lora_modules():
        a = module.a
        match = None
        for shape, transposed_layout in ((tuple(a.T.shape), True), (tuple(a.shape), False)):
            for name in by_shape.get(shape, []):
                if name in renames:
                    continue
                stored = value(initializers[name])
                expected = a.T if transposed_layout else a
                exported = expected.astype(_np_type(initializers[name])).astype(np.float32)  # as the export cast it
                if stored.shape == expected.shape and np.array_equal(stored, exported):
                    a_node, through_transpose = matmul_weight(name)
                    if a_node is not None and through_transpose != transposed_layout:
                        match = (name, a_node)
                        break
            if match:
                break
        if match is None:
            raise PassError(f"the export has no LoRA MatMul for {module.name} (its lora_A weight is not an initializer "
                            "of a MatMul)", "export the model with the adapter applied unmerged (peft PeftModel)")
        a_name, a_node = match
        users = consumers.get(a_node.output[0], [])
        b_node = users[0] if len(users) == 1 and users[0].op_type == "MatMul" else None
        b_name = weight_of(b_node)[0] if b_node is not None else None
        if b_name is None:
            raise PassError(f"the export of {module.name}: the lora_A MatMul does not feed a lora_B MatMul",
                            "export the model with the adapter applied unmerged (peft PeftModel)")
        renames[a_name], renames[b_name] = lora_name(module.name, "A"), lora_name(module.name, "B")
        named += 1
    taken = set(initializers) - set(renames)
    clash = sorted(set(renames.values()) & taken)
    if clash:
        raise PassError(f"the export already has initializers named {clash[:2]}", "export again from the peft model")
    for tensor in graph.initializer:
        tensor.name = renames.get(tensor.name, tensor.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for value_info in list(graph.input) + list(graph.value_info):
        value_info.name = renames.get(value_info.name, value_info.name)
    onnx.save(proto, str(onnx_path))
    return named


def _attr(node, name: str, default=None):
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _np_type(tensor):
    from onnx.helper import tensor_dtype_to_np_dtype

    return tensor_dtype_to_np_dtype(tensor.data_type)
