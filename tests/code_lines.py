"""Lines of code of a Python file, not counting docstrings, comments and blank lines (the size the issues quote)."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

_NOT_CODE = {
    tokenize.COMMENT,
    tokenize.NL,
    tokenize.NEWLINE,
    tokenize.INDENT,
    tokenize.DEDENT,
    tokenize.ENCODING,
    tokenize.ENDMARKER,
}


def docstring_lines(tree: ast.AST) -> set[int]:
    """The lines of every module, class and function docstring in `tree`."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def code_lines(source: str) -> int:
    """How many lines hold a token of code (a multi-line string that is not a docstring counts every line)."""
    docstrings = docstring_lines(ast.parse(source))
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _NOT_CODE:
            lines.update(n for n in range(token.start[0], token.end[0] + 1) if n not in docstrings)
    return len(lines)


def file_code_lines(path: str | Path) -> int:
    return code_lines(Path(path).read_text(encoding="utf-8"))


if __name__ == "__main__":  # python tests/code_lines.py FILE...: code lines and all lines per file
    import sys

    total = 0
    for name in sys.argv[1:]:
        text = Path(name).read_text(encoding="utf-8")
        total += code_lines(text)
        print(f"{code_lines(text):6d} {len(text.splitlines()):6d}  {name}")
    print(f"{total:6d}         total")
