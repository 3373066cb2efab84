"""The documentation runs: README's analysis snippets, the docs/ pages' examples, the doctest
configuration, and the code's citations of docs/ pages and headings.

These guard against documentation that silently drifts from the code: a renamed function in
a README snippet, an example in ``docs/`` that no longer registers or runs, a citation
(``docs/maths.md#transport``) whose page or heading was renamed, and a pytest configuration
that stops running the docstring examples.
"""

from __future__ import annotations

import importlib
import json
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from gatescope.conftest import restored_registries
from gatescope.integrations.extras import MissingExtra
from gatescope.verify import run_checks

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SOURCE = ROOT / "src" / "gatescope"
#: Pages the index links to that another change writes (the quantity API is being redesigned).
PENDING_PAGES = {"adding-a-quantity.md"}


# ---------------------------------------------------------------------- helpers


def python_blocks(markdown: str) -> list[str]:
    """The ```python fenced blocks of ``markdown``, dedented (blocks may sit in list items)."""
    fence = re.compile(r"^([ \t]*)```python[ \t]*\n(.*?)^\1```[ \t]*$", re.M | re.S)
    return [textwrap.dedent(m.group(2)) for m in fence.finditer(markdown)]


def section(markdown: str, title: str) -> str:
    """The text under the ``## title`` heading, up to the next heading of level 1 or 2."""
    match = re.search(rf"^## {re.escape(title)}[ \t]*\n(.*?)(?=^#{{1,2}} |\Z)", markdown,
                      re.M | re.S)
    assert match, f"no section '## {title}'"
    return match.group(1)


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to -."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of every heading of a Markdown page (outside code blocks)."""
    text = re.sub(r"^```.*?^```", "", page.read_text(), flags=re.M | re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, re.M)}


@pytest.fixture
def clean_registries():
    """Restore every gatescope registry after the test (the examples register things)."""
    with restored_registries():
        yield


def run_blocks(blocks: list[str], namespace: dict, where: str) -> dict:
    """Execute the blocks one after another in one namespace; returns it."""
    assert blocks, f"no python blocks in {where}"
    for i, block in enumerate(blocks):
        # dont_inherit: this module's `from __future__ import annotations` must not apply
        exec(compile(block, f"<{where} block {i}>", "exec", dont_inherit=True), namespace)
    return namespace


# ---------------------------------------------------------------------- README


def _stepped_adam() -> torch.optim.Adam:
    """The reader's optimizer: an Adam that has taken a step (before it, no step sizes)."""
    layer = torch.nn.Linear(4, 3)
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3)
    layer(torch.randn(2, 4)).square().sum().backward()
    opt.step()
    return opt


def test_readme_analysing_your_own_model_runs(tmp_path, monkeypatch):
    """Every python block of README's "Analysing your own model" runs as written, with the
    names it leaves to the reader (``u``, ``y``, ``opt``, the probe batch, ``steps``) given
    tiny values here."""
    monkeypatch.chdir(tmp_path)  # the probe block writes run/probe and run/figures
    torch.manual_seed(0)
    blocks = python_blocks(section((ROOT / "README.md").read_text(), "Analysing your own model"))
    u, y = torch.randn(12, 5, 4), torch.randn(12, 1)  # 12 examples: AI_10 needs >= 10 rows
    opt = _stepped_adam()
    namespace = {"u": u, "y": y, "opt": opt, "u_probe": u[:4], "y_probe": y[:4], "steps": 2}
    run_blocks(blocks, namespace, "README")
    assert namespace["mu"].shape == (12, 6, 3, 64)
    assert (tmp_path / "run" / "probe.json").exists()
    assert namespace["results"].steps.tolist() == [0]


def test_readme_inspect_commands_run_as_written(tmp_path, monkeypatch):
    """Guards README's `gatescope inspect` promise (issue 11): its bash block (a state_dict of
    a 2-layer batch-first nn.GRU, an .npy of inputs, the command) runs as written and reports
    every layer."""
    monkeypatch.chdir(tmp_path)
    readme = section((ROOT / "README.md").read_text(), "Analysing your own model")
    blocks = re.findall(r"^([ \t]*)```bash[ \t]*\n(.*?)^\1```", readme, re.M | re.S)
    block = next(textwrap.dedent(b) for _, b in blocks if "gatescope inspect" in b)
    for line in block.splitlines():
        command = shlex.split(line, comments=True)
        assert command[0] in ("python", "gatescope"), line
        command = ([sys.executable, *command[1:]] if command[0] == "python"
                   else [sys.executable, "-m", "gatescope", *command[1:], "--quiet"])
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    summary = json.loads((tmp_path / "inspect-report" / "inspect.json").read_text())
    assert summary["module"].startswith("nn.GRU(4, 16, num_layers=2")
    assert [u["label"] for u in summary["units"]] == ["layer 0 forward", "layer 1 forward"]
    assert [u["input_size"] for u in summary["units"]] == [4, 16]


# ---------------------------------------------------------------------- docs/ pages


@pytest.mark.parametrize("page", ["adding-a-cell.md", "adding-an-experiment.md"])
def test_page_examples_run(page, tmp_path, monkeypatch, clean_registries):
    """The complete examples of the how-to pages run as written, in page order (what they
    register is removed afterwards)."""
    monkeypatch.chdir(tmp_path)
    run_blocks(python_blocks((DOCS / page).read_text()), {"__name__": "docs_example"}, page)


def test_cell_page_example_passes_verify(clean_registries):
    """The cell of docs/adding-a-cell.md has a correct closed form: every check of the
    verify suite runs (none skipped) and passes."""
    blocks = python_blocks((DOCS / "adding-a-cell.md").read_text())
    run_blocks(blocks[:1], {"__name__": "docs_example"}, "adding-a-cell.md")
    results = run_checks(cells=["mgu"])
    assert results and all(r.passed and not r.skipped for r in results), results


def _cited_pages() -> list[tuple[str, str, str]]:
    """``(file, page, anchor)`` of every ``docs/PAGE.md[#anchor]`` in the code."""
    cited = []
    for folder in ("src", "tests", "benchmarks", "examples"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.name == "test_docs.py":  # its docstrings describe the pattern
                continue
            text = path.read_text()
            for m in re.finditer(r"docs/([\w.-]+\.md)(#[\w-]+)?", text):
                cited.append((path.relative_to(ROOT).as_posix(), m.group(1),
                              (m.group(2) or "#")[1:]))
    return cited


def test_code_cites_existing_pages_and_headings():
    """Every ``docs/PAGE.md#anchor`` cited in src/, tests/, benchmarks/ and examples/ names an
    existing page and one of its headings."""
    cited = _cited_pages()
    assert len(cited) >= 18
    missing = [(f, page, a) for f, page, a in cited
               if not (DOCS / page).exists() or (a and a not in anchors(DOCS / page))]
    assert not missing, missing


def test_no_citations_outside_the_repository():
    """The code cites docs/ pages, not a design file the repository does not contain."""
    stale = [f"{path.relative_to(ROOT)}:{i}"
             for folder in ("src", "tests", "benchmarks", "examples")
             for path in sorted((ROOT / folder).rglob("*.py")) if path.name != "test_docs.py"
             for i, line in enumerate(path.read_text().splitlines(), start=1)
             if re.search(r"DESIGN(\.md|\s*§)", line)]
    assert not stale, stale


def test_docs_links_resolve():
    """Relative links between the docs pages (and to the README) point at existing files and
    headings."""
    broken = []
    for page in sorted(DOCS.glob("*.md")):
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            path = (page.parent / file) if file else page
            if path.name in PENDING_PAGES and not path.exists():
                continue
            if not path.exists() or (anchor and anchor not in anchors(path)):
                broken.append(f"{page.name}: {target}")
    assert not broken, broken


# ---------------------------------------------------------------------- doctests


def test_pytest_configuration_runs_the_doctests():
    """A plain ``python -m pytest`` from the repository root (what CI runs) collects the
    docstring examples: the package is a test path and doctest collection is on."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"][
        "ini_options"]
    assert "src/gatescope" in config["testpaths"] and "tests" in config["testpaths"]
    assert "--doctest-modules" in config["addopts"].split()
    # every folder of the package is a regular package, or doctest collection would import
    # its modules as top-level modules and their relative imports would fail
    assert all((folder / "__init__.py").exists() for folder in SOURCE.iterdir()
               if folder.is_dir() and any(folder.glob("*.py")))
    assert (SOURCE / "conftest.py").exists()


def _module_names() -> list[str]:
    names = []
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        if parts[-1] in ("__main__", "conftest"):
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


@pytest.mark.parametrize("name", _module_names())
def test_every_module_imports(name):
    """Doctest collection imports every module of the package: none may fail to import, but
    for a module needing an optional package that is not installed, which says which extra
    installs it."""
    try:
        importlib.import_module(name)
    except MissingExtra as err:
        pytest.skip(str(err))


def _module_or_none(name: str):
    """The module ``name``, or ``None`` when it needs an optional package not installed."""
    try:
        return importlib.import_module(name)
    except MissingExtra:
        return None


def test_docstring_examples_exist():
    """The doctests that CI runs are there (a docstring example that silently stopped being
    collected would otherwise go unnoticed)."""
    import doctest

    modules = {name: _module_or_none(name) for name in _module_names()}
    found = [t for name, module in modules.items() if module is not None
             for t in doctest.DocTestFinder().find(module)
             if t.examples and t.name.startswith(name)]
    assert len(found) >= 6, [t.name for t in found]
