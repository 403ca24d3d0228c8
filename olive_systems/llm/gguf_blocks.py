"""Int4 / int8 MatMulNBits straight from a GGUF checkpoint's own blocks: lossless re-quantization.

A model read from a GGUF file carries weights that were dequantized from 32-weight blocks
(Q4_0: d*(q-8); Q4_1: d*q + m; Q8_0: d*q). Quantizing those fp32 weights again (RTN, HQQ, the
model builder) rounds a second time: on SmolLM2's Q4_1 blocks that cost about 1.3x in perplexity.
Instead, each MatMul weight whose rows are found, bit for bit, among the GGUF's dequantized rows
becomes a MatMulNBits with exactly those blocks (scale d; zero point 8, 128, or for Q4_1 zero plus
the block offsets m added through the input's block sums), so the int4 model computes the very
weights the fp32 model does; only accuracy_level 4's int8 activations round. Rows are matched by
content, so the export's initializer names, fused projections (the model builder's QKV) and the
GGUF's row order (llama's q/k permutation) do not matter.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

SOURCE_FILE = "gguf_source.json"  # written beside a folder read from a GGUF file; travels as a side file
BLOCK = 32
# ggml type -> (bytes per block, bits in MatMulNBits)
_LAYOUTS = {"Q4_0": (18, 4), "Q4_1": (20, 4), "Q8_0": (34, 8)}


def write_source(folder: Path, gguf_path: Path, sha256: str) -> None:
    (Path(folder) / SOURCE_FILE).write_text(json.dumps({"file": str(Path(gguf_path).resolve()), "sha256": sha256}))


def read_source(folder: Path) -> dict | None:
    path = Path(folder) / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def _blocks(kind: str, raw: np.ndarray):
    """(q [blocks, 32] uint8 as stored for MatMulNBits, scale [blocks], zero point [blocks], dequantized [blocks, 32])."""
    size, _ = _LAYOUTS[kind]
    raw = raw.reshape(-1, size)
    d = raw[:, 0:2].copy().view(np.float16).astype(np.float32).ravel()
    if kind == "Q8_0":
        q = raw[:, 2:].copy().view(np.int8).astype(np.int16)
        return (q + 128).astype(np.uint8), d, np.full_like(d, 128.0), d[:, None] * q.astype(np.float32)
    offset = 4 if kind == "Q4_1" else 2
    packed = raw[:, offset:]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=1)  # ggml: low nibbles first, then high
    if kind == "Q4_1":
        m = raw[:, 2:4].copy().view(np.float16).astype(np.float32).ravel()
        with np.errstate(divide="ignore", invalid="ignore"):
            zero = np.where(d != 0, -m / d, 0.0).astype(np.float32)
        return q, d, zero, d[:, None] * q.astype(np.float32) + m[:, None]
    return q, d, np.full_like(d, 8.0), d[:, None] * (q.astype(np.float32) - 8)


class GgufRows:
    """Every quantized row of a GGUF file, findable by the bytes of its dequantized fp32 values."""

    def __init__(self, gguf_path: Path):
        from gguf import GGUFReader

        self.rows: dict[bytes, tuple] = {}
        for tensor in GGUFReader(str(gguf_path)).tensors:
            kind = tensor.tensor_type.name
            if kind not in _LAYOUTS:
                continue
            raw = np.asarray(tensor.data)
            n_rows = raw.shape[0]
            q, scale, zero, values = _blocks(kind, raw)
            per_row = q.shape[0] // n_rows
            values = values.reshape(n_rows, -1)
            for r in range(n_rows):
                span = slice(r * per_row, (r + 1) * per_row)
                self.rows[_digest(values[r])] = (kind, q[span], scale[span], zero[span])

    def find(self, weight_rows: np.ndarray):
        """The GGUF blocks of every row of weight [N, K], or None if any row is not there or the rows mix types."""
        found = [self.rows.get(_digest(row)) for row in weight_rows]
        if any(f is None for f in found) or len({f[0] for f in found}) != 1:
            return None
        kind = found[0][0]
        q = np.stack([f[1] for f in found])  # [N, blocks, 32]
        return kind, q, np.stack([f[2] for f in found]), np.stack([f[3] for f in found])


def _digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(row, dtype=np.float32).tobytes(), digest_size=16).digest()


def requantize_from_gguf(proto, gguf_path: Path, accuracy_level: int | None, excluded: set[str], log) -> dict:
    """Replace, in place, every MatMul whose constant weight comes from the GGUF's blocks by a
    MatMulNBits holding those blocks. Returns counts by GGUF type (and 'kept')."""
    import onnx
    from onnx import numpy_helper

    rows = GgufRows(gguf_path)
    initializers = {init.name: init for init in proto.graph.initializer}
    counts: dict[str, int] = {"kept": 0}
    new_nodes, used, block_sums = [], set(), {}
    for node in proto.graph.node:
        weight = initializers.get(node.input[1]) if node.op_type == "MatMul" and len(node.input) == 2 else None
        if weight is None or node.name in excluded or len(weight.dims) != 2 or weight.dims[0] % BLOCK:
            counts["kept"] += node.op_type == "MatMul"
            new_nodes.append(node)
            continue
        matrix = numpy_helper.to_array(weight)  # [K, N]: the MatMul's B
        match = rows.find(matrix.T)
        if match is None:
            counts["kept"] += 1
            new_nodes.append(node)
            continue
        kind, q, scale, zero = match
        bits = _LAYOUTS[kind][1]
        block_offsets = None
        if kind == "Q4_1":
            # d*q + m = d*(q - 0) + m. onnxruntime's fast kernels take whole zero points only (a float
            # one, -m/d, runs ~10x slower), so: zero point 0, and per block m times the block's sum of
            # the input, added by a small MatMul (the block sums shared by the MatMuls of one input)
            block_offsets = (-zero * scale).T.astype(np.float32)  # m: [blocks, N]
            zero = np.zeros_like(zero)
        n, k = matrix.shape[1], matrix.shape[0]
        packed = q if bits == 8 else (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        base = node.input[1]
        tensors = [numpy_helper.from_array(packed.reshape(n, k // BLOCK, BLOCK * bits // 8), f"{base}_gguf_q{bits}"),
                   numpy_helper.from_array(scale.reshape(-1).astype(np.float32), f"{base}_gguf_scales"),
                   numpy_helper.from_array(_zero_points(zero, bits), f"{base}_gguf_zero_points")]
        proto.graph.initializer.extend(tensors)
        attributes = dict(K=k, N=n, bits=bits, block_size=BLOCK)
        if accuracy_level is not None:
            attributes["accuracy_level"] = accuracy_level
        name = (node.name or base) + f"_gguf_{kind}"
        output = node.output[0] if block_offsets is None else f"{name}_blocks_q"
        new_nodes.append(onnx.helper.make_node("MatMulNBits", [node.input[0], *[t.name for t in tensors]], [output],
                                               name=name, domain="com.microsoft", **attributes))
        if block_offsets is not None:
            sums = block_sums.get(node.input[0])
            if sums is None:  # x @ P: P [K, blocks] sums each block of 32 inputs
                indicator = np.kron(np.eye(k // BLOCK, dtype=np.float32), np.ones((BLOCK, 1), np.float32))
                proto.graph.initializer.append(numpy_helper.from_array(indicator, f"{name}_block_indicator"))
                sums = block_sums[node.input[0]] = f"{name}_block_sums"
                new_nodes.append(onnx.helper.make_node("MatMul", [node.input[0], f"{name}_block_indicator"], [sums],
                                                       name=f"{name}_block_sums"))
            proto.graph.initializer.append(numpy_helper.from_array(block_offsets, f"{base}_gguf_block_mins"))
            new_nodes.append(onnx.helper.make_node("MatMul", [sums, f"{base}_gguf_block_mins"], [f"{name}_blocks_m"],
                                                   name=f"{name}_mins"))
            new_nodes.append(onnx.helper.make_node("Add", [output, f"{name}_blocks_m"], list(node.output), name=f"{name}_add"))
        used.add(base)
        counts[kind] = counts.get(kind, 0) + 1
    del proto.graph.node[:]
    proto.graph.node.extend(new_nodes)
    still_used = {name for node in proto.graph.node for name in node.input}
    keep = [init for init in proto.graph.initializer if init.name not in used or init.name in still_used]
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    if not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    log(f"GGUF blocks reused: {', '.join(f'{v} {k}' for k, v in counts.items() if k != 'kept')}; "
        f"{counts['kept']} MatMul kept in float (not from the GGUF's quantized blocks)")
    return counts



def _zero_points(zero: np.ndarray, bits: int) -> np.ndarray:
    """Whole zero points (Q4_0's 8, Q8_0's 128, Q4_1's 0) as uint8, packed two per byte at 4 bits."""
    whole = zero.astype(np.uint8)  # [N, blocks]
    if bits == 8:
        return whole.reshape(-1)
    if whole.shape[1] % 2:
        whole = np.pad(whole, ((0, 0), (0, 1)))
    return (whole[:, 0::2] | (whole[:, 1::2] << 4)).astype(np.uint8).reshape(-1)
