"""Command-line arguments generated from a function's signature, type hints and docstring.

Each parameter becomes `--name` (and `--name-with-dashes`): bool -> a flag (`--x`, or `--x/--no-x`
when its default is True or None), list[T] -> one or more T, Literal[...] -> choices, int/float/str
-> that type; `X | None` is X, and a union of several forms takes the first (a command line gives
a str where Python may also take a list or a dict). Help texts come from the docstring's "Args:"
section. A parameter without a default is a required option.

A `**kwargs` parameter takes `--kwargs KEY=VALUE ...`, and every option the command does not know,
`--key value`, `--key=value` or a bare `--flag` (true), goes to it the same way. Values become int,
float, true/false, null, JSON lists and objects, or else stay strings.
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import types
import typing
from typing import Callable, Literal, Union, get_args, get_origin


def docstring_args(func: Callable) -> dict[str, str]:
    """name -> text of each entry of the docstring's "Args:" section (Google style)."""
    lines = (inspect.getdoc(func) or "").splitlines()
    entries: dict[str, str] = {}
    inside, current, indent = False, None, None
    for line in lines:
        if not inside:
            inside = line.strip() == "Args:"
            continue
        if line.strip() and not line.startswith(" "):  # the next section (Returns:, ...)
            break
        if not line.strip():
            continue
        width = len(line) - len(line.lstrip())
        match = re.match(r"\s*\**(\w+)(\s*\([^)]*\))?:\s*(.*)$", line)
        if match and (indent is None or width == indent):
            indent, current = width, match.group(1)
            entries[current] = match.group(3).strip()
        elif current is not None:  # a continuation line
            entries[current] = f"{entries[current]} {line.strip()}".strip()
    return entries


def docstring_summary(func: Callable) -> tuple[str, str]:
    """(first line, the text before "Args:") of the docstring."""
    doc = inspect.getdoc(func) or ""
    head = doc.split("\nArgs:", 1)[0].strip()
    return (head.splitlines()[0] if head else func.__name__), head


def argument_options(hint, default, required: bool) -> dict:
    """add_argument keywords for a parameter of type `hint` with `default`."""
    optional = False
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        members = [member for member in get_args(hint) if member is not type(None)]
        optional = len(members) < len(get_args(hint))
        hint, origin = members[0], get_origin(members[0])
    options: dict = {"required": True} if required else {"default": default}
    if hint is bool:
        if required or default is True or optional:
            options["action"] = argparse.BooleanOptionalAction
        else:
            options["action"] = "store_true"
        return options
    if origin in (list, tuple, typing.Sequence) or hint in (list, tuple):
        item = (get_args(hint) or (str,))[0]
        options.update(nargs="+", **_scalar(item))
        return options
    options.update(_scalar(hint))
    return options


def _scalar(hint) -> dict:
    if get_origin(hint) is Literal:
        choices = list(get_args(hint))
        return {"type": type(choices[0]), "choices": choices}
    if hint in (int, float, str):
        return {"type": hint}
    raise TypeError(f"no command-line form for parameters of type {hint!r}")


def add_function_arguments(parser: argparse.ArgumentParser, func: Callable) -> list[str]:
    """Add one option per parameter of func to parser; returns the parameter names (the dests)."""
    hints = typing.get_type_hints(func)
    docs = docstring_args(func)
    names = []
    for name, parameter in inspect.signature(func).parameters.items():
        if parameter.kind == parameter.VAR_KEYWORD:
            _add_keyword_arguments(parser, name, docs.get(name, ""))
            continue
        if parameter.kind == parameter.VAR_POSITIONAL:
            continue
        required = parameter.default is inspect.Parameter.empty
        options = argument_options(hints.get(name, str), None if required else parameter.default, required)
        text = docs.get(name, "").replace("%", "%%")
        shown_default = options.get("default")
        if (options.get("action") is not argparse.BooleanOptionalAction  # that action shows its default itself
                and shown_default not in (None, False)):
            text = f"{text} (default: {shown_default})".strip()
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        if "choices" in options:  # listed once in the help, not after every flag
            text = f"{text} One of: {', '.join(map(str, options['choices']))}.".strip()
        metavar = {} if "action" in options else {"metavar": name.upper()}
        parser.add_argument(*flags, dest=name, help=text or None, **metavar, **options)
        names.append(name)
    return names


def call_with_arguments(func: Callable, args: argparse.Namespace):
    """func called with the parsed value of each of its parameters (a **kwargs one: its KEY=VALUE pairs)."""
    parameters = inspect.signature(func).parameters.items()
    names = [name for name, p in parameters if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    extra = {}
    for name in (name for name, p in parameters if p.kind == p.VAR_KEYWORD):
        extra.update(keyword_pairs(getattr(args, name, None) or []))
    clash = sorted(set(extra) & set(names))
    if clash:
        from ..errors import RecipeError

        raise RecipeError(f"--{clash[0]} is given twice (once among the KEY=VALUE pairs)", "give it once")
    return func(**{name: getattr(args, name) for name in names}, **extra)


def _add_keyword_arguments(parser: argparse.ArgumentParser, name: str, text: str) -> None:
    """`--name KEY=VALUE ...`, and the parser's unknown options gathered into the same list."""
    text = f"{text} Given as --{name} KEY=VALUE ..., or each as an option of its own: --KEY VALUE.".strip()
    flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    parser.add_argument(*flags, dest=name, nargs="+", metavar="KEY=VALUE", default=None, help=text.replace("%", "%%"))
    known = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, rest = known(args, namespace)
        pairs, left = [], []
        index = 0
        while index < len(rest):
            token = rest[index]
            if not token.startswith("--") or token == "--":
                left.append(token)
            elif "=" in token:
                pairs.append(token[2:])
            elif index + 1 < len(rest) and not rest[index + 1].startswith("--"):
                pairs.append(f"{token[2:]}={rest[index + 1]}")
                index += 1
            else:
                pairs.append(f"{token[2:]}=true")
            index += 1
        if pairs:
            setattr(namespace, name, [*(getattr(namespace, name, None) or []), *pairs])
        return namespace, left

    parser.parse_known_args = parse_known_args


def keyword_pairs(items: list[str]) -> dict:
    """['learning_rate=1e-4', 'max-steps=10'] -> {'learning_rate': 0.0001, 'max_steps': 10}."""
    values = {}
    for item in items:
        key, separator, text = str(item).partition("=")
        key = key.strip().lstrip("-").replace("-", "_")
        if not separator or not key.isidentifier():
            from ..errors import RecipeError

            raise RecipeError(f"'{item}' is not KEY=VALUE", "write each extra argument as --KEY VALUE or KEY=VALUE")
        values[key] = _value(text.strip())
    return values


def _value(text: str):
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text.startswith(("[", "{")):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text
