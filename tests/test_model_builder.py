"""ModelBuilder: onnxruntime-genai's builder, run in its own tool environment (transformers 5)
over the host's packages, gives an int4 genai folder that generates like the torch model starts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from olive_systems.errors import PassError, RecipeError
from olive_systems.models import ModelRef
from olive_systems.passes.base import Accelerator, PassContext
from olive_systems.recipe import load_recipe


def build(folder: Path, out: Path, **config) -> ModelRef:
    from olive_systems.passes.model_builder import ModelBuilder

    ref = ModelRef(type="HfModel", path=str(folder), hash="h", task="text-generation-with-past")
    ctx = PassContext(Accelerator("cpu", "CPUExecutionProvider"), None, print)
    return ModelBuilder().run(ref, ModelBuilder.resolve_config(config), out, ctx)


def test_model_builder_int4_folder_runs_in_genai(tmp_path, tiny_llama):
    import onnx
    import onnxruntime_genai as og

    out = build(tiny_llama, tmp_path / "int4", precision="int4", int4_block_size=16, int4_accuracy_level=4)
    folder = Path(out.path)
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all({a.name: a.i for a in n.attribute}["block_size"] == 16 for n in nbits)
    assert any(n.op_type == "GroupQueryAttention" for n in graph.node)
    # the input's tokenizer files, not the builder's own, sit beside the model
    assert (folder / "tokenizer.json").read_bytes() == (tiny_llama / "tokenizer.json").read_bytes()
    model = og.Model(str(folder))
    tokenizer = og.Tokenizer(model)
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=24, min_length=24)
    generator = og.Generator(model, params)
    generator.append_tokens(tokenizer.encode("a short prompt"))
    while not generator.is_done():
        generator.generate_next_token()
    assert len(generator.get_sequence(0)) == 24


def test_model_builder_refuses_encoders_and_bad_block_sizes(tmp_path, tiny_bert, tiny_llama):
    from olive_systems.passes.model_builder import ModelBuilder

    ctx = PassContext(Accelerator("cpu", "CPUExecutionProvider"), None, print)
    with pytest.raises(PassError, match="builds decoders"):
        ModelBuilder().run(ModelRef(type="HfModel", path=str(tiny_bert), hash="h", task="feature-extraction"),
                           ModelBuilder.resolve_config({}), tmp_path / "x", ctx)
    recipe = {"input_model": {"type": "HfModel", "model_path": str(tiny_llama), "task": "text-generation-with-past"},
              "passes": {"builder": {"type": "ModelBuilder", "config": {"int4_block_size": 48}}}}
    with pytest.raises(RecipeError, match="int4_block_size"):
        load_recipe(recipe)


def test_tool_environment_is_reused_and_shadows_the_host(tmp_path, monkeypatch):
    import subprocess

    from olive_systems.passes.model_builder import BUILDER_PINS
    from olive_systems.toolenv import tool_python

    first, second = tool_python(BUILDER_PINS), tool_python(BUILDER_PINS)
    assert first == second and first != Path(sys.executable)
    versions = subprocess.run([str(first), "-c", "import transformers, torch; print(transformers.__version__, torch.__version__)"],
                              capture_output=True, text=True, check=True).stdout.split()
    import torch

    assert versions == [BUILDER_PINS[0].split("==")[1], torch.__version__]  # its transformers, the host's torch
