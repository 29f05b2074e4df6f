"""The shape of the code base, checked: module and function sizes, no family named outside its own folder (jobs,
sweeps, the CLI and serving dispatch through geomoe.core.registry), and an import contract that covers every shared
module. The import layering itself is import-linter's (pyproject.toml, `lint-imports` in `make test`)."""

from __future__ import annotations

import ast
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

from geomoe.core.config import JobSpec

PACKAGE = Path(__file__).resolve().parents[2] / "platform" / "geomoe"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_modules_and_functions_stay_small() -> None:
    long_modules = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > 450}
    assert not long_modules, f"modules over {MAX_MODULE_LINES} lines: {long_modules}"
    long_functions = {}
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long_functions[f"{path.relative_to(PACKAGE)}:{node.name}"] = length
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def own_modules(family: str) -> set[Path]:
    """A family's own code: its folder under geomoe/families, nothing else."""
    return set((PACKAGE / "families" / family).rglob("*.py"))


def test_no_family_is_named_outside_its_own_modules() -> None:
    families = sorted(point.name for point in entry_points(group="geomoe.families"))
    assert len(families) >= 2, families  # the built-in families are registered through entry points
    found = []
    for family in families:
        own = own_modules(family)
        for path in modules():
            if path in own:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value == family:
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} names {family!r}")
    assert not found, "\n".join(found)


def shared_top_level() -> set[str]:
    """Every package and module of geomoe that is not a family's: the root's, and geomoe.families' own."""
    names = {f"geomoe.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    names |= {f"geomoe.{p.name}" for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name != "families"}
    return names | {f"geomoe.families.{p.stem}" for p in (PACKAGE / "families").glob("*.py") if p.stem != "__init__"}


def test_the_layers_are_the_folders() -> None:
    """The package root holds the two layers, the families and the command, nothing loose beside them: a new module
    goes into the core (never imports Ray) or the Ray layer, and the import contracts cover it from there."""
    root = {p.name for p in PACKAGE.iterdir() if p.name != "__pycache__"}
    assert root == {"__init__.py", "py.typed", "cli.py", "core", "on_ray", "families"}


def test_the_no_family_import_contract_covers_every_shared_module() -> None:
    """A new shared module cannot slip past import-linter's contract: the contract must list it."""
    config = tomllib.loads((PACKAGE.parents[1] / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if "imports a family" in c["name"])
    families = sorted(point.name for point in entry_points(group="geomoe.families"))
    assert sorted(m.rsplit(".", 1)[1] for m in contract["forbidden_modules"]) == families
    assert shared_top_level() - set(contract["source_modules"]) == set()


SPEC_SECTIONS = set(JobSpec.model_fields)
SECTION_ACCESSORS = {"model_as": "model", "train_as": "train"}
# Functions that take the whole JobSpec to read one or two of its sections ("climbs": the walk from run_job goes
# back up to the root for a branch). 28 before issue 34, 13 after; what is left are hooks and stage callables whose
# interface takes the job. A new one fails here: give the function the section it reads instead.
MAX_CLIMBS = 13


def _reads_sections(node: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[set[str], bool] | None:
    """(the JobSpec sections ``node`` reads, whether it also uses the spec whole: passes it on or calls one of its
    methods); None when it takes no JobSpec."""
    params = node.args.args + node.args.kwonlyargs
    names = {a.arg for a in params if a.annotation is not None and ast.unparse(a.annotation).endswith("JobSpec")}
    if not names:
        return None
    bases = {id(sub.value) for sub in ast.walk(node) if isinstance(sub, ast.Attribute)}
    sections, whole = set(), False
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in names and id(sub) not in bases and isinstance(sub.ctx, ast.Load):
            whole = True
        if isinstance(sub, ast.Attribute) and isinstance(sub.value, ast.Name) and sub.value.id in names:
            section = SECTION_ACCESSORS.get(sub.attr, sub.attr)
            sections, whole = (sections | {section}, whole) if section in SPEC_SECTIONS else (sections, True)
    return sections, whole


def test_functions_take_the_spec_section_they_read() -> None:
    climbs = []
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and (read := _reads_sections(node)):
                sections, whole = read
                if 1 <= len(sections) <= 2 and not whole:
                    climbs.append(f"{path.relative_to(PACKAGE)}:{node.name} reads {sorted(sections)}")
    assert len(climbs) <= MAX_CLIMBS, "\n".join(climbs)
