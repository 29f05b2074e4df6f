"""The model-family registry (core: no Ray, no family named here).

A family (PE-MoE, SMGeo, or one of yours) is an object with a ``name``, its ``model_spec`` and ``train_spec``
classes, and the hooks that jobs, sweeps, the CLI and serving call (``geomoe.families.base.Family``). Families
come from two places, both loaded on first lookup:

- the ``geomoe.families`` entry-point group (pyproject.toml): the built-in families, and any installed package
  that declares one;
- a job's ``families:`` list: dotted module paths, or ``.py`` files, whose import registers a family. Ray
  workers validate the job spec too, so they import the same modules before they look a family up.

The job spec's ``model.name`` picks the family; a ``model`` section without a name is the family that declares
itself ``default``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
import threading
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from geomoe.core.errors import GeomoeError

if TYPE_CHECKING:
    from geomoe.families.base import Family

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "geomoe.families"


class UnknownFamilyError(GeomoeError):
    """``model.name`` names no registered family."""


_families: dict[str, Family] = {}
_plugins: set[str] = set()
_lock = threading.Lock()
_entry_points_loaded = False


def register(family: Family) -> Family:
    """Add ``family`` (re-registering the same name replaces it: a reloaded plugin module); returns it."""
    _families[family.name] = family
    return family


def section_owners() -> dict[str, list[str]]:
    """Each top-level job section a registered family declares (``Family.sections``) -> the families declaring it."""
    _load_entry_points()
    owners: dict[str, list[str]] = {}
    for name, family in sorted(_families.items()):
        for section in family.sections:
            owners.setdefault(section, []).append(name)
    return owners


def _load_entry_points() -> None:
    global _entry_points_loaded
    with _lock:
        if _entry_points_loaded:
            return
        for point in entry_points(group=ENTRY_POINT_GROUP):
            family = point.load()
            if family.name != point.name:
                raise GeomoeError(f"entry point {point.value}: registers {family.name!r} under the name {point.name!r}")
            _families.setdefault(family.name, family)
        _entry_points_loaded = True


def load_plugins(modules: Iterable[str]) -> None:
    """Import each module (a dotted path, or a ``.py`` file) once; importing it registers its families."""
    for module in modules:
        if module in _plugins:
            continue
        try:
            if module.endswith(".py"):
                _import_file(Path(module))
            else:
                importlib.import_module(module)
        except (ImportError, OSError) as err:
            raise UnknownFamilyError(f"families: cannot import {module!r}: {err}") from err
        _plugins.add(module)


def _import_file(path: Path) -> None:
    # a stable module name per file, so that a second import of the same file is the same module
    name = f"geomoe_family_{path.stem}_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} is not a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def names() -> list[str]:
    _load_entry_points()
    return sorted(_families)


def family(name: str | None) -> Family:
    """The family called ``name`` (None: the default family)."""
    _load_entry_points()
    if name is None:
        defaults = [f for f in _families.values() if f.default]
        if len(defaults) != 1:
            raise UnknownFamilyError(f"model.name is required (no single default family among {names()})")
        return defaults[0]
    if name not in _families:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; registered: {', '.join(names())} "
            "(a family of your own: list its module or .py file under the job's `families:`)"
        )
    return _families[name]
