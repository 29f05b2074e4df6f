"""Spec machinery: strict pydantic models, YAML loading with ``${ENV}`` references, ``--set`` overrides, and
errors that name the file, the dotted key and the reason (``SpecError``)."""

from __future__ import annotations

import difflib
import os
import re
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from geomoe.core import storage
from geomoe.core.errors import SpecError


def _numeric(annotation: Any) -> bool:
    """An int or float field (optional or not; bool is not a number here)."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        parts = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(parts) and all(_numeric(a) for a in parts)
    if typing.get_origin(annotation) is typing.Annotated:
        return _numeric(typing.get_args(annotation)[0])
    return False


def _parses_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class Strict(BaseModel):
    """Every spec section: unknown keys are errors, assignments are validated too, and a number is a number: a
    quoted ``"32"`` for an int or float key is refused (pydantic would turn it into 32)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _numbers_unquoted(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(field.alias or name)
                if isinstance(value, str) and _numeric(field.annotation):
                    hint = " (write it without quotes)" if _parses_as_number(value) else ""
                    raise ValueError(f"{name}: expected a number, got the string {value!r}{hint}")
        return data


class SpecLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-4`` (no dot) is a number, not the string PyYAML 1.1's
    rule makes it (which the spec models' refusal of quoted numbers would then refuse)."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_scalar(text: str) -> Any:
    """A ``--set`` value as YAML (with ``SpecLoader``'s floats)."""
    return yaml.load(text, Loader=SpecLoader)


def apply_overrides(raw: dict[str, Any], overrides: list[str], source: str) -> dict[str, Any]:
    """Apply ``dotted.key=value`` strings to a raw spec dict. Values are parsed as YAML scalars/lists."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise SpecError(source, item, "override must look like dotted.key=value")
        try:
            value = parse_scalar(text) if text else ""
        except yaml.YAMLError as err:
            raise SpecError(source, key, f"override value is not valid YAML: {err}") from err
        node = raw
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SpecError(source, ".".join(parts[: depth + 1]), "is not a section; cannot set a key in it")
            node = child
        node[parts[-1]] = value
    return raw


SpecT = TypeVar("SpecT", bound=BaseModel)
_KEY_PREFIX = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z0-9_]+)*): (.+)$", re.DOTALL)


def _first_error(err: ValidationError) -> tuple[str, str]:
    """The error to show: a misspelt key (unknown, and close to a key reported missing beside it: the misspelling
    made its right spelling "missing") before anything else, named with its likely spelling; else the first."""
    errors = err.errors()
    for unknown in (e for e in errors if e["type"] == "extra_forbidden"):
        loc = unknown["loc"]
        missing = [str(e["loc"][-1]) for e in errors if e["type"] == "missing" and e["loc"][:-1] == loc[:-1]]
        close = difflib.get_close_matches(str(loc[-1]), missing, n=1)
        if close:
            return ".".join(map(str, loc)), f"unknown key (did you mean {close[0]!r}?)"
    detail = errors[0]
    key, reason = ".".join(str(part) for part in detail["loc"]), str(detail["msg"])
    if detail["type"] == "extra_forbidden":
        reason = "unknown key"
    reason = reason.removeprefix("Value error, ")
    # a validator of a whole section says which key it means: "stages: ..." -> key stages
    said = _KEY_PREFIX.match(reason)
    if said:
        key, reason = ".".join(filter(None, [key, said.group(1)])), said.group(2)
    return key, reason


def parse_spec(model: type[SpecT], raw: Any, source: str, overrides: list[str] | None = None) -> SpecT:
    """Validate a raw mapping as ``model``; raise SpecError naming ``source`` and the first bad key."""
    if not isinstance(raw, dict):
        raise SpecError(source, "", f"the top level must be a mapping, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [], source)
    try:
        return model.model_validate(raw)
    except ValidationError as err:
        key, reason = _first_error(err)
        more = err.error_count() - 1
        raise SpecError(source, key, reason + (f" (and {more} more errors)" if more else "")) from err


_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_env(raw: Any, source: str, key: str = "") -> Any:
    """Replace ``${NAME}`` and ``${NAME:-default}`` in string values from the environment (one variable, such
    as GEOMOE_STORAGE, points every job, sweep and serve config at the cluster's storage). An unset variable
    without a default is an error naming the key."""
    if isinstance(raw, dict):
        return {k: expand_env(v, source, f"{key}.{k}" if key else str(k)) for k, v in raw.items()}
    if isinstance(raw, list):
        return [expand_env(v, source, f"{key}.{i}" if key else str(i)) for i, v in enumerate(raw)]
    if not isinstance(raw, str):
        return raw

    def value(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise SpecError(source, key, f"${{{name}}} is not set in the environment (or write ${{{name}:-default}})")
        return default

    return _ENV_REFERENCE.sub(value, raw)


MAX_YAML_VALUES = 100_000  # far above any spec; an alias bomb's expansion is astronomically above it


def load_yaml(path: str | Path) -> Any:
    """A YAML spec file (a path or URI), with ``${NAME}`` environment references expanded."""
    return expand_env(read_yaml(path), str(path))


def read_yaml(path: str | Path) -> Any:
    """A YAML file (a path or URI) read safely: plain data only (no Python objects), and refused when its aliases
    would expand it past ``MAX_YAML_VALUES`` values (the "billion laughs": a few lines that every later walk over
    the data, validation included, would take forever on). SpecError naming the file otherwise."""
    if not storage.is_file(path):
        raise SpecError(str(path), "", "file not found")
    try:
        loader = SpecLoader(storage.read_text(path))
        try:  # one parse: the node graph is measured, then built into Python values only if it is small
            node = loader.get_single_node()
            size = _expanded_size(node, {}, str(path))
            if size > MAX_YAML_VALUES:
                raise SpecError(str(path), "", f"its aliases expand it to {size:.3g} values (over {MAX_YAML_VALUES})")
            return None if node is None else loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.YAMLError as err:
        raise SpecError(str(path), "", f"not valid YAML: {err}") from err
    except storage.StorageError as err:
        raise SpecError(str(path), "", str(err).removeprefix(f"{path}: ")) from err


def _expanded_size(node: yaml.Node | None, sizes: dict[int, int], source: str, where: str = "") -> int:
    """How many values ``node`` stands for once every alias is copied out (each shared node counted once per use,
    computed once). A mapping that gives a key twice is refused on the way: YAML keeps the last one silently."""
    if node is None or id(node) in sizes:
        return sizes.get(id(node), 0)
    size = 1
    if isinstance(node, yaml.SequenceNode):
        size += sum(_expanded_size(child, sizes, source, f"{where}[{i}]") for i, child in enumerate(node.value))
    elif isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key, value in node.value:
            name = f"{where}.{key.value}".lstrip(".") if isinstance(key, yaml.ScalarNode) else where
            if isinstance(key, yaml.ScalarNode) and key.value != "<<" and name in lines:
                first, again = lines[name], key.start_mark.line + 1
                raise SpecError(source, name, f"given twice (lines {first} and {again}); keep one")
            lines[name] = key.start_mark.line + 1
            size += _expanded_size(key, sizes, source) + _expanded_size(value, sizes, source, name)
    sizes[id(node)] = size
    return size
