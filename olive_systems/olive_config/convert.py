"""convert-config: an Olive config file -> a native recipe YAML file."""

from __future__ import annotations

from ..errors import RecipeError
from .detect import is_olive_config
from .translator import translate


def _anchor_local_paths(recipe: dict, folder) -> None:
    """A recipe written to another folder keeps naming the same files: each relative path that
    exists beside the Olive config becomes absolute (hub ids and names stay as they are)."""
    from pathlib import Path

    from ..recipe import _resource_slots

    def anchored(value):
        return str(folder / value) if isinstance(value, str) and (Path(folder) / value).exists() and \
            not Path(value).is_absolute() else value

    for holder, key, _where, _remote in _resource_slots(recipe):
        if key in holder:
            value = holder[key]
            holder[key] = [anchored(v) for v in value] if isinstance(value, list) else anchored(value)


def convert_file(path, output=None) -> str:
    """Translate an Olive config file into native recipe YAML (written to output when given)."""
    from pathlib import Path

    import yaml

    from ..recipe import _parse

    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"config '{path}' not found", "give the path of an Olive .json or .yaml config")
    raw = _parse(path)
    if not is_olive_config(raw):
        raise RecipeError(f"{path.name} is already an olive-systems recipe", "run it as it is: olive-systems run --config")
    recipe = translate(raw, path.name)
    if output and Path(output).resolve().parent != path.resolve().parent:
        _anchor_local_paths(recipe, path.resolve().parent)
    text = f"# olive-systems recipe converted from the Olive config {path.name}\n" + yaml.safe_dump(
        recipe, sort_keys=False, default_flow_style=None, width=110)
    if output:
        Path(output).write_text(text)
    return text
