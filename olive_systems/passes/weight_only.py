"""Weight-only quantization: MatMul weights to block-wise int4/int8 MatMulNBits.

onnxruntime's MatMulNBitsQuantizer does the work, with one of its algorithms:

- rtn: round to nearest per block (its C++ kernels); 4 or 8 bits; also Gather (embeddings) to
  GatherBlockQuantized at 4 bits.
- gptq: GPTQ, weights corrected against calibration activations (a data_config); 4 bits.
- hqq: half-quadratic quantization, no data; 4 bits.

What onnxruntime 1.31 cannot do is refused before any work, at recipe validation where the recipe
names the setting and otherwise when the pass starts: AWQ (not in the quantizer), 8-bit gptq (it
would leave the weights in float) and 8-bit hqq (it writes MatMulNBits the CPU kernel cannot run).

Olive's pass names for the same thing are aliases of this class with the algorithm preset (see
passes/__init__.py).
"""

from __future__ import annotations

import contextlib
import fnmatch
import io
import logging
import tempfile
from pathlib import Path

from ..errors import PassError
from ..models import ONNX_FILE, ModelRef, copy_onnx_model, copy_side_files, folder_sha256, has_external_data, save_onnx
from .base import Pass, PassContext

AWQ_REFUSAL = ("algorithm awq needs activation-aware scales fitted on calibration activations in PyTorch before "
               "the export (AutoAWQ), and onnxruntime's MatMulNBits quantizer has no AWQ; "
               "rtn, gptq and hqq are available")
EIGHT_BIT_REFUSALS = {
    "gptq": "gptq writes MatMulNBits only at 4 bits in onnxruntime 1.31 (8-bit weights would stay float); "
            "use bits 4, or algorithm rtn for 8 bits",
    "hqq": "hqq's 8-bit MatMulNBits (float zero points) cannot run on onnxruntime 1.31's CPU kernel; "
           "use bits 4, or algorithm rtn for 8 bits",
}
GATHER_REFUSAL = ("Gather (embedding) quantization is rtn at 4 bits only in onnxruntime 1.31; "
                  "drop Gather from op_types_to_quantize or use algorithm rtn with bits 4")
GPTQ_NEEDS_DATA = "algorithm gptq needs calibration data: set data_config to a data_configs entry"
GGUF_BLOCK_REFUSAL = "algorithm gguf keeps the GGUF's own blocks of 32 weights: set block_size 32"

# Decoder inputs a calibration feed may leave out: filled for an empty KV cache (see _complete_feed).
_PAST_PREFIX = "past"


def _not(schema: dict, why: str) -> dict:
    """A schema refusing what `schema` matches; the validator's message shows `why`."""
    return {"not": {**schema, "description": why}}


class OnnxWeightOnlyQuantization(Pass):
    description = ("Weight-only quantization of MatMul (and optionally Gather) weights to block-wise int4/int8 "
                   "MatMulNBits with onnxruntime's MatMulNBitsQuantizer (rtn, gptq or hqq).")
    depends_on = ("onnxruntime", "onnx", "torch")  # hqq runs on torch
    config_schema = {
        "algorithm": {
            "enum": ["rtn", "gptq", "hqq", "gguf", "awq"], "default": "rtn",
            "description": "rtn: round to nearest per block; gptq: calibrated on data_config (4 bits); "
                           "hqq: half-quadratic, no data (4 bits); gguf: the blocks of the GGUF checkpoint the "
                           "model was read from, reused exactly (Q4_0/Q4_1 -> 4 bits, Q8_0 -> 8 bits, block 32); "
                           "awq: not available in onnxruntime",
            **_not({"const": "awq"}, AWQ_REFUSAL),
        },
        "bits": {"enum": [4, 8], "default": 4, "description": "bits per weight; 8 with algorithm rtn only"},
        "block_size": {"enum": [16, 32, 64, 128, 256], "default": 32,
                       "description": "weights per block along K sharing a scale: must be a power of two in 16..256"},
        "is_symmetric": {"type": "boolean", "default": True,
                         "description": "rtn, gptq: no zero points; hqq always fits a float zero point per block"},
        "accuracy_level": {"type": ["integer", "null"], "minimum": 0, "maximum": 4, "default": None,
                           "description": "MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 "
                                          "(null: the quantizer's default)"},
        "nodes_to_exclude": {"type": "array", "items": {"type": "string"}, "default": [],
                             "description": "node names or glob patterns kept in float"},
        "op_types_to_quantize": {"type": "array", "items": {"enum": ["MatMul", "Gather"]}, "minItems": 1,
                                 "uniqueItems": True, "default": ["MatMul"],
                                 "description": "Gather quantizes embeddings (GatherBlockQuantized; rtn, 4 bits)"},
        "data_config": {"type": "string", "description": "name of a data_configs entry: calibration for gptq"},
        "max_calibration_samples": {"type": ["integer", "null"], "minimum": 1, "default": None,
                                    "description": "gptq: at most this many calibration batches (default: all)"},
    }

    @classmethod
    def full_schema(cls) -> dict:
        """The cross-setting rules, so recipe validation refuses them before any work (a searched
        setting is checked again when the pass starts)."""
        when = cls._when
        not_gather = _not({"contains": {"const": "Gather"}}, GATHER_REFUSAL)
        return {
            **super().full_schema(),
            "allOf": [
                {"if": when("algorithm", "gptq"), "then": {"required": ["data_config"]}},
                *({"if": when("algorithm", name), "then": {"properties": {"bits": _not({"const": 8}, why)}}}
                  for name, why in EIGHT_BIT_REFUSALS.items()),
                {"if": when("algorithm", "gptq", "hqq"), "then": {"properties": {"op_types_to_quantize": not_gather}}},
                {"if": when("bits", 8), "then": {"properties": {"op_types_to_quantize": not_gather}}},
                {"if": when("algorithm", "gguf"),
                 "then": {"properties": {"block_size": _not({"not": {"const": 32}}, GGUF_BLOCK_REFUSAL)}}},
            ],
        }

    @classmethod
    def _when(cls, key: str, *values) -> dict:
        """JSON-Schema condition "key is one of values", where an absent key has its default."""
        condition = {"properties": {key: {"enum": list(values)}}}
        if cls.config_schema[key].get("default") not in values:
            condition["required"] = [key]
        return condition

    def run(self, model: ModelRef, config: dict, out_dir: Path, ctx: PassContext) -> ModelRef:
        refusal = _refusal(config)
        if refusal:
            raise PassError(refusal)
        out_dir.mkdir(parents=True, exist_ok=True)
        external = has_external_data(Path(model.path))
        # The quantizer reads (gptq: writes scratch files beside) its input: a private copy whose
        # external data files are copies, never the cache folder nor hard links.
        with tempfile.TemporaryDirectory(dir=out_dir.parent) as work:
            source_dir = Path(work) / "input"
            copy_onnx_model(Path(model.path), source_dir)
            proto = self._quantize(model, source_dir / ONNX_FILE, config, ctx)
            counts = _finish(proto, config)
            if not counts["MatMulNBits"]:
                raise PassError(f"{type(self).__name__}: no MatMul with a constant weight was quantized",
                                "check nodes_to_exclude, or quantize before fusing the MatMuls into other operators")
            copy_side_files(Path(model.path), out_dir)
            save_onnx(proto, out_dir, external_data=external)
        ctx.log(f"{counts['MatMulNBits']} MatMul -> MatMulNBits ({config['algorithm']}, {config['bits']} bits, "
                f"block {config['block_size']}), {counts['GatherBlockQuantized']} Gather -> GatherBlockQuantized, "
                f"{counts['MatMul']} MatMul kept (excluded, or no constant weight)")
        attributes = {**model.attributes, "quantization": "weight_only", "bits": config["bits"],
                      "block_size": config["block_size"], "algorithm": config["algorithm"]}
        return model.relocated(out_dir, hash=folder_sha256(out_dir), attributes=attributes)

    def _quantize(self, model: ModelRef, source: Path, config: dict, ctx: PassContext):
        import numpy as np
        import onnx

        nbits = _quantizer_module()
        graph = onnx.load(str(source), load_external_data=False)
        excluded = [node.name for node in graph.graph.node
                    if node.name and any(fnmatch.fnmatchcase(node.name, p) for p in config["nodes_to_exclude"])]
        op_types = tuple(config["op_types_to_quantize"])
        algorithm, bits, block_size = config["algorithm"], config["bits"], config["block_size"]
        if algorithm == "gguf":
            return _from_gguf(model, source, config, set(excluded), ctx)
        if algorithm == "rtn":
            algo = nbits.DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=config["is_symmetric"],
                                                      accuracy_level=config["accuracy_level"], bits=bits,
                                                      op_types_to_quantize=op_types)
        elif algorithm == "hqq":
            algo = nbits.HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits, op_types_to_quantize=op_types)
        else:  # gptq
            feeds = _calibration_feeds(model, graph, config, ctx)
            algo = nbits.GPTQWeightOnlyQuantConfig(calibration_data_reader=_Feeds(feeds), op_types_to_quantize=op_types)
        try:
            model_input = str(source)  # a path: gptq on a model over 2 GB needs one
            if "Gather" in op_types and _onnx_opset(graph) < 21:
                # GatherBlockQuantized's int4 data needs opset 21; the quantizer only restamps the opset,
                # which breaks operators that changed since (ReduceMean): convert the model properly.
                from onnx import version_converter

                model_input = version_converter.convert_version(onnx.load(str(source)), 21)
            quantizer = _quantizer_class(nbits)(
                model_input, bits=bits, block_size=block_size, is_symmetric=config["is_symmetric"],
                accuracy_level=config["accuracy_level"], nodes_to_exclude=excluded, op_types_to_quantize=op_types,
                algo_config=algo)
            # np: all-zero blocks (token type embeddings); stdout: gptq's progress bar
            with np.errstate(divide="ignore", invalid="ignore"), contextlib.redirect_stdout(io.StringIO()):
                quantizer.process()
        except PassError:
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise PassError(f"{type(self).__name__} ({algorithm}) failed: {first}",
                            "keep the failing nodes in float with nodes_to_exclude, or try another algorithm") from exc
        return quantizer.model.model


def _from_gguf(model: ModelRef, source: Path, config: dict, excluded: set, ctx: PassContext):
    import onnx

    from ..llm.gguf_blocks import read_source, requantize_from_gguf
    from ..models import file_sha256

    origin = read_source(Path(model.path))
    if origin is None:
        raise PassError("algorithm gguf reuses the blocks of the GGUF file a model was read from; this model was not "
                        "read from one", "give input_model.gguf_file, or use algorithm rtn / hqq / gptq")
    gguf_path = Path(origin["file"])
    if not gguf_path.is_file() or file_sha256(gguf_path) != origin["sha256"]:
        raise PassError(f"algorithm gguf: the GGUF file {gguf_path} the model was read from is gone or changed",
                        "restore it, or use algorithm rtn / hqq / gptq")
    proto = onnx.load(str(source))
    requantize_from_gguf(proto, gguf_path, config["accuracy_level"], excluded, ctx.log)
    return proto


def _refusal(config: dict) -> str | None:
    """Why onnxruntime cannot do what the config asks (the schema's rules, for searched settings too)."""
    algorithm, bits = config["algorithm"], config["bits"]
    if algorithm == "awq":
        return AWQ_REFUSAL
    if bits == 8 and algorithm in EIGHT_BIT_REFUSALS:
        return EIGHT_BIT_REFUSALS[algorithm]
    if "Gather" in config["op_types_to_quantize"] and (algorithm != "rtn" or bits != 4):
        return GATHER_REFUSAL
    if algorithm == "gptq" and not config.get("data_config"):
        return GPTQ_NEEDS_DATA
    if algorithm == "gguf" and config["block_size"] != 32:
        return GGUF_BLOCK_REFUSAL
    return None


def _quantizer_module():
    """onnxruntime's matmul_nbits_quantizer, imported without the root-logger setup its import does
    (logging.basicConfig at INFO) and with its per-node INFO lines silenced."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    from onnxruntime.quantization import matmul_nbits_quantizer

    root.handlers[:] = handlers
    root.setLevel(level)
    logging.getLogger(matmul_nbits_quantizer.__name__).setLevel(logging.WARNING)
    return matmul_nbits_quantizer


def _quantizer_class(nbits):
    class Quantizer(nbits.MatMulNBitsQuantizer):
        def _generate_q4_node_config(self):
            # onnxruntime 1.31 applies nodes_to_exclude to RTN only: GPTQ would quantize them anyway.
            node_config = super()._generate_q4_node_config()
            node_config.update({name: "fp32" for name in self.nodes_to_exclude})
            return node_config

    return Quantizer


def _onnx_opset(proto) -> int:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)


def _finish(proto, config: dict) -> dict:
    """Set accuracy_level on every MatMulNBits (hqq and gptq do not), declare the com.microsoft
    domain, and count the nodes by type."""
    import onnx

    counts = {"MatMulNBits": 0, "GatherBlockQuantized": 0, "MatMul": 0}
    for node in proto.graph.node:
        if node.op_type in counts:
            counts[node.op_type] += 1
        if node.op_type == "MatMulNBits" and config["accuracy_level"] is not None:
            kept = [a for a in node.attribute if a.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend([*kept, onnx.helper.make_attribute("accuracy_level", config["accuracy_level"])])
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return counts


def _calibration_feeds(model: ModelRef, graph, config: dict, ctx: PassContext) -> list[dict]:
    name = config["data_config"]
    feeds = ctx.load_data(name, model).inputs
    limit = config.get("max_calibration_samples")
    feeds = feeds[:limit] if limit else feeds
    if not feeds:
        raise PassError(f"data config '{name}' gives no calibration batches", "point data_config at data with rows")
    initializers = {t.name for t in graph.graph.initializer}
    inputs = [i for i in graph.graph.input if i.name not in initializers]
    return [_complete_feed(feed, inputs) for feed in feeds]


def _complete_feed(feed: dict, inputs) -> dict:
    """A feed with exactly the model's inputs. A decoder's calibration text comes without its KV
    cache: past_* inputs get an empty past ([batch, kv_heads, 0, head_dim]), attention_mask ones,
    position_ids 0..n-1, the batch and sequence length read from input_ids."""
    import numpy as np
    from onnx.helper import tensor_dtype_to_np_dtype

    ids = feed.get("input_ids")
    out, missing = {}, []
    for spec in inputs:
        name, tensor_type = spec.name, spec.type.tensor_type
        if name in feed:
            out[name] = np.asarray(feed[name])
            continue
        dtype = tensor_dtype_to_np_dtype(tensor_type.elem_type)
        if ids is None:
            missing.append(name)
        elif name.startswith(_PAST_PREFIX):
            shape = [d.dim_value if d.HasField("dim_value") else {0: ids.shape[0], 2: 0}.get(i)
                     for i, d in enumerate(tensor_type.shape.dim)]
            if None in shape:
                missing.append(name)
            else:
                out[name] = np.zeros(shape, dtype=dtype)
        elif name == "attention_mask":
            out[name] = np.ones(ids.shape[:2], dtype=dtype)
        elif name == "position_ids":
            out[name] = np.broadcast_to(np.arange(ids.shape[1], dtype=dtype), ids.shape[:2]).copy()
        else:
            missing.append(name)
    if missing:
        raise PassError(f"the calibration data lacks the model inputs {missing}",
                        "give a data_config whose batches hold them (a decoder's need input_ids at least)")
    return out


class _Feeds:
    """The calibration data reader GPTQ iterates (get_next, rewind, and iteration)."""

    def __init__(self, feeds: list[dict]):
        self.feeds, self.index = feeds, 0

    def get_next(self):
        if self.index >= len(self.feeds):
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self):
        self.index = 0

    def __iter__(self):
        return self

    def __next__(self):
        feed = self.get_next()
        if feed is None:
            raise StopIteration
        return feed
