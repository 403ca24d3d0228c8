"""Olive's run configs, read as they are: both generations translated into an olive-systems recipe.

Two generations of Olive config exist. The older one nests options under `config` (input model,
systems, passes), describes Hugging Face models with `hf_config`, data with `params_config`,
accelerators as strings with `engine.execution_providers`, and searches with `OnnxQuantization`'s
`quant_mode` and `SEARCHABLE_VALUES`. The current one puts options straight on the entry and the
engine's keys (`evaluator`, `host`, `target`, `search_strategy` with `sampler` / `max_samples`,
`output_dir`, ...) at the top level.

`translate` returns the native recipe dict (before validation: recipe.load_recipe validates it as
any recipe). Every key is either translated, accepted because its value is what olive-systems does
anyway, or reported with what to use instead; all problems are reported at once.
"""

from .convert import convert_file
from .detect import is_olive_config
from .translator import translate

__all__ = ["convert_file", "is_olive_config", "translate"]
