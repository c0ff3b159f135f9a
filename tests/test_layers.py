"""The package's layers (docs/layout.md): each module imports only from its own layer or the ones above it."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "s2l_trl"

# Top to bottom; a module may import from its own layer and the layers above it, never from below.
LAYERS = [
    {"schedule", "mixing", "trl_compat"},
    {"answers", "jsonl", "preflight"},
    {"explorers"},
    {"config", "model_card"},
    {"trainer", "callbacks", "checkpoints", "codistill"},
    {"rewards", "data"},
    {"sampling"},
    {"evaluation"},
    {"miniature"},
    {"cli"},
    {"devtools"},
]


def _unit(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"s2l_trl/{unit} is in no layer of tests/test_layers.py: place it")


def _imported_units(path: Path) -> set[str]:
    units = set()
    tree = ast.parse(path.read_text())
    package_parts = path.relative_to(PACKAGE).parts[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                base = list(package_parts[: len(package_parts) - (node.level - 1)])
                target = base + (node.module.split(".") if node.module else [])
                if not target:  # `from . import x` at the top level
                    target = [alias.name for alias in node.names][:1]
                units.add(target[0])
            elif node.module and node.module.startswith("s2l_trl."):
                units.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            units.update(a.name.split(".")[1] for a in node.names if a.name.startswith("s2l_trl."))
    return units


def test_every_module_imports_only_from_its_layer_or_above():
    offences = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == PACKAGE:
            continue  # the package root re-exports the public names of every layer
        unit = _unit(path)
        for imported in _imported_units(path) - {unit}:
            if _layer(imported) > _layer(unit):
                offences.append(f"{path.relative_to(PACKAGE.parent)} imports s2l_trl.{imported} (a lower layer)")
    assert not offences, "\n".join(offences)


# ---------------------------------------------------------------- sizes (code lines: no docstrings, comments, blanks)
# A reader finds the algorithm on one screen and the plumbing in modules named for what they hold (issue 27).
# Issue 27: the trainers and every module of the split server explorer and rollout store.
CODE_LINE_LIMITS = {
    "codistill/trainer.py": 500,
    "trainer.py": 500,
    **{f"explorers/{package}/*.py": 500 for package in ("server", "rollout_store")},
}


def test_the_code_line_counter_skips_docstrings_comments_and_blank_lines():
    from code_lines import code_lines

    source = '''"""Module docstring,
two lines."""

# a comment
def f(x):
    """Docstring."""
    message = """not a docstring,
    two lines"""
    return x  # trailing comment
'''
    assert code_lines(source) == 4  # def, the two lines of `message`, return


def test_files_with_a_size_budget_stay_within_it():
    from code_lines import file_code_lines

    limits = {str(p.relative_to(PACKAGE)): n for pattern, n in CODE_LINE_LIMITS.items() for p in PACKAGE.glob(pattern)}
    assert len(limits) >= 2 + 2 * 7, sorted(limits)  # every pattern still names its files
    sizes = {name: file_code_lines(PACKAGE / name) for name in limits}
    over = {name: f"{n} > {limits[name]}" for name, n in sizes.items() if n > limits[name]}
    assert not over, f"code lines over budget (split the plumbing into modules named for it): {over}"
