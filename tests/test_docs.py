"""The README and the docs pages stay true to the code: every relative link and anchor resolves, every file they name
exists, and every command they show still exists with the flags they give it (`s2l-*` commands against their
parsers, `python -m` modules and scripts against their `--help`, launch scripts against their option lists)."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "recipes/README.md", REPO / "eval/README.md"]
PATH_PREFIXES = ("scripts/", "recipes/", "tests/", "s2l_trl/", "docs/", "eval/", "results/")
CLI_PARSERS = {
    "s2l-train": "s2l_trl.cli.train:make_parser",
    "s2l-codistill": "s2l_trl.cli.codistill:make_parser",
    "s2l-sample": "s2l_trl.cli.sample:make_parser",
    "s2l-eval": "s2l_trl.cli.eval:make_parser",
    "s2l-eval plot": "s2l_trl.cli.eval:make_plot_parser",
}


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, flags=re.M)}


def _commands(page: Path) -> list[str]:
    """Shell commands of a page: lines of ```bash blocks (continuations joined) and inline code that starts with a
    command this project ships."""
    text = page.read_text()
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                lines.extend(part.strip() for part in re.split(r"&&|\|\|?|;", line))
    starts = ("s2l-", "python -m s2l_trl", "python scripts/", "python eval/", "recipes/launch/")
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    lines += [c for c in re.findall(r"`([^`\n]+)`", prose) if c.startswith(starts)]
    return lines


def _flags(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if w.startswith("--") and len(w) > 2]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_links_anchors_and_named_files_exist(page):
    text = page.read_text()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link to {target!r}, which does not exist"
        if anchor and resolved.suffix == ".md":
            assert anchor in _anchors(resolved), f"{page.name}: no heading for #{anchor} in {resolved.name}"
    for name in re.findall(r"`([^`\s]+)`", text):
        if name.startswith(PATH_PREFIXES) and not re.search(r"[<>*{}$]|\.\.\.", name):
            assert (REPO / name.rstrip("/,.:").split(":")[0]).exists(), f"{page.name}: names {name!r}, not in the repo"


def _parser_flags(spec: str) -> set[str]:
    import importlib

    module, _, name = spec.partition(":")
    parser = getattr(importlib.import_module(module), name)()
    return {option for action in parser._actions for option in action.option_strings}


def _help_text(argv: list[str], run) -> str:
    out = io.StringIO()
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
            run()
    finally:
        sys.argv = saved
    assert exit_info.value.code in (0, None), f"{' '.join(argv)} exited with {exit_info.value.code}"
    return out.getvalue()


def _check_command(words: list[str], page: str) -> None:
    head = words[0]
    if "*" in head:  # a family of commands named in prose (`s2l-*`), not one to run
        return
    if head.startswith("s2l-"):
        name = "s2l-eval plot" if words[:2] == ["s2l-eval", "plot"] else head
        assert name in CLI_PARSERS, f"{page}: unknown command {head!r}"
        known = _parser_flags(CLI_PARSERS[name])
        unknown = [f for f in _flags(words) if f not in known and f != "--config"]
        assert not unknown, f"{page}: {name} has no option {unknown}"
    elif head == "python" and words[1] == "-m":
        module, rest = words[2], words[3:]
        argv = [module, *[w for w in rest if not w.startswith("-")][:1], "--help"]
        text = _help_text(argv, lambda: runpy.run_module(module, run_name="__main__", alter_sys=True))
        unknown = [f for f in _flags(rest) if f not in text]
        assert not unknown, f"{page}: python -m {module} {' '.join(argv[1:-1])} has no option {unknown}"
    elif head == "python":
        script = REPO / words[1]
        assert script.is_file(), f"{page}: {words[1]} does not exist"
        text = _help_text([str(script), "--help"], lambda: runpy.run_path(str(script), run_name="__main__"))
        unknown = [f for f in _flags(words[2:]) if f not in text]
        assert not unknown, f"{page}: {words[1]} has no option {unknown}"
    elif head.startswith("recipes/launch/"):
        script = REPO / head
        assert script.is_file(), f"{page}: {head} does not exist"
        source = script.read_text()
        options = set(re.findall(r"^\s+(--[\w-]+)\)", source, flags=re.M))
        unknown = [f for f in _flags(words[1 : words.index("--") if "--" in words else None]) if f not in options]
        assert not unknown, f"{page}: {head} has no option {unknown}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_commands_exist_with_the_flags_shown(page, monkeypatch):
    from trl import GRPOTrainer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    trl_before = dict(vars(GRPOTrainer))
    checked = 0
    for line in _commands(page):
        line = re.sub(r"^[A-Z_]+=\S+ ", "", line)  # leading environment assignments
        try:
            words = shlex.split(line)
        except ValueError:
            continue
        words = [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)]
        if not words or not words[0].startswith(("s2l-", "python", "recipes/launch/")):
            continue
        if words[0] == "python" and len(words) > 1 and not (words[1] == "-m" or words[1].endswith(".py")):
            continue
        _check_command(words, page.name)
        checked += 1
    if page.name == "README.md" and page.parent == REPO:
        assert checked >= 1  # the main job's command at least
    # The commands run in this process: one that patches TRL on import would change every later test's TRL.
    assert dict(vars(GRPOTrainer)) == trl_before, f"{page.name}: a command patched GRPOTrainer on import"


def test_the_readme_fits_a_first_read():
    """The README holds the first use (what S2L-PO is, the two commands, the two-name swap, the backends); the rest
    lives in docs/ pages it links to."""
    text = (REPO / "README.md").read_text()
    assert len(text.splitlines()) <= 130
    assert "recipes/launch/tiny_cpu.sh" in text and ".venv/bin/python -m pytest -q" in text
    linked = set(re.findall(r"\]\((docs/[\w.]+)", text))
    assert linked == {f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")}, "every docs page is linked"
