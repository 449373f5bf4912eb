"""The docs site: it builds strictly, every page's math renders offline in a real browser, no
internal link is broken, and every Python example in the hand-written pages and in the
docstrings (which the API pages render) runs.

The browser is Debian's ``chromium`` (``scripts/setup.sh`` installs it), run headless with the
network-free flags below on ``file://`` pages: MathJax comes from the site itself, so a page
whose formulas rendered proves the vendored copy works with no network. The code shown on the
generated proof pages is the proof modules' own code, run by ``tests/test_proofs.py``.
"""

from __future__ import annotations

import doctest
import html
import importlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--virtual-time-budget=8000",
]


def _load_hook():
    spec = importlib.util.spec_from_file_location("relaycore_docs_hook", DOCS / "_hooks" / "relaycore_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


HOOK = _load_hook()


def _sources() -> dict:
    """Page source path (relative to docs/) -> markdown, generated proof pages included."""
    pages = {p.relative_to(DOCS).as_posix(): p.read_text() for p in DOCS.rglob("*.md") if "_hooks" not in p.parts}
    for name, _ in HOOK.PROOFS:
        pages[f"proofs/{name}.md"] = HOOK.proof_markdown(name)
    return pages


SOURCES = _sources()


def _built_path(source: str) -> str:
    """Where mkdocs (directory URLs) writes the page of ``source``."""
    stem = source[: -len(".md")]
    if stem == "index" or stem.endswith("/index"):
        return stem + ".html"
    return stem + "/index.html"


_FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.S | re.M)
_CODE_SPAN = re.compile(r"(`+)(?!`).+?(?<!`)\1(?!`)", re.S)
# pymdownx.arithmatex's delimiters: blocks $$...$$ and \[...\], inline \(...\) and $...$ (smart
# dollar: no space just inside either dollar)
_BLOCK_MATH = re.compile(r"\$\$(.+?)\$\$|\\\[(.+?)\\\]", re.S)
_INLINE_PAREN = re.compile(r"\\\((.+?)\\\)", re.S)
_INLINE_DOLLAR = re.compile(r"(?<![\\$])\$(?!\s)((?:\\.|[^\\$])+?)(?<!\s)\$")


def count_formulas(markdown: str) -> int:
    """Formulas written in a page's markdown (the delimiters arithmatex reads), outside code."""
    text = _CODE_SPAN.sub("", _FENCE.sub("", markdown))
    count = len(_BLOCK_MATH.findall(text))
    text = _BLOCK_MATH.sub("", text)
    count += len(_INLINE_PAREN.findall(text))
    return count + len(_INLINE_DOLLAR.findall(_INLINE_PAREN.sub("", text)))


def test_count_formulas_counts_what_arithmatex_sees():
    sample = ("a $x$ and $y_1$ but not `$z$` nor 5 $ and 6 $, \\(w\\) too\n\n$$\na + b\n$$\n\n"
              "\\[\nc\n\\]\n\n```python\n'$w$'\n```\n")
    assert count_formulas(sample) == 5


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(out)],
                         cwd=ROOT, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    return out


@pytest.fixture(scope="module")
def rendered(site):
    """Built page path -> the DOM headless Chromium holds after MathJax ran."""
    browser = shutil.which("chromium")
    assert browser, "chromium is missing: run scripts/setup.sh (it installs Debian's chromium)"
    doms = {}
    for source in SOURCES:
        page = site / _built_path(source)
        with tempfile.TemporaryDirectory() as profile:
            run = subprocess.run([browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
                                 capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, run.stderr[-2000:]
        doms[_built_path(source)] = run.stdout
    return doms


def test_site_builds_strict_with_every_page(site):
    for source in SOURCES:
        assert (site / _built_path(source)).is_file(), source
    assert (site / HOOK.MATHJAX_SITE_PATH).stat().st_size > 1_000_000  # the vendored MathJax


@pytest.mark.parametrize("source", sorted(SOURCES))
def test_math_renders(source, site, rendered):
    expected = count_formulas(SOURCES[source])
    static = (site / _built_path(source)).read_text()
    dom = rendered[_built_path(source)]
    assert static.count('class="arithmatex"') == expected, "markdown and arithmatex disagree on the formulas"
    assert dom.count("<mjx-container") == expected, "not every formula was rendered by MathJax"
    assert '<g data-mml-node="merror"' not in dom, "a formula failed to typeset"
    visible = re.sub(r"<(pre|code|script|style)\b.*?</\1>", "", dom, flags=re.S)
    for left in (r"\(", r"\[", "$$"):
        assert left not in visible, f"unrendered math {left!r} left in the page"


def test_pages_have_math_where_the_math_is():
    for source in ["math/state.md", "math/relay.md", "math/causal.md", "math/errors.md", "why.md"] + [f"proofs/{n}.md" for n, _ in HOOK.PROOFS]:
        assert count_formulas(SOURCES[source]) >= 5, source


_HREF = re.compile(r'<a\b[^>]*\bhref="([^"]*)"', re.S)
_ID = re.compile(r'\bid="([^"]+)"')


def test_internal_links(site, rendered):
    broken = []
    for page, dom in rendered.items():
        for href in _HREF.findall(dom):
            href = html.unescape(href)
            parts = urlsplit(href)
            if parts.scheme in ("http", "https", "mailto", "data", "javascript") or href.startswith("//"):
                continue
            if parts.scheme == "file":
                target = Path(unquote(parts.path))
            elif parts.path:
                target = (site / page).parent / unquote(parts.path)
            else:
                target = site / page
            if target.is_dir():
                target = target / "index.html"
            target = target.resolve()
            if not target.is_file() or site.resolve() not in target.parents:
                broken.append(f"{page}: {href}")
                continue
            if parts.fragment and target.suffix == ".html":
                ids = set(_ID.findall(target.read_text()))
                if unquote(parts.fragment) not in ids:
                    broken.append(f"{page}: {href} (no #{parts.fragment})")
    assert not broken, "\n".join(broken)


_PYTHON = re.compile(r"^```python[^\n]*\n(.*?)^```\s*$", re.S | re.M)
EXAMPLES = {s: _PYTHON.findall(text) for s, text in SOURCES.items() if not s.startswith("proofs/")}


@pytest.mark.parametrize("source", sorted(s for s, blocks in EXAMPLES.items() if blocks))
def test_python_examples_run(source, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": f"docs_example_{source}"}
    for i, block in enumerate(EXAMPLES[source]):
        exec(compile(block, f"{source} [example {i + 1}]", "exec"), namespace)


def test_every_hand_written_page_with_code_has_its_examples_collected():
    assert sum(len(b) for b in EXAMPLES.values()) >= 10


# a TeX command written into a string that is not raw loses its backslash to an escape:
# "\tau" becomes a tab and "au", "\beta" a backspace, "\frac" a form feed, "\alpha" a bell,
# "\varepsilon" a vertical tab; MathJax then typesets the remains without complaint
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]|\t")


def test_no_page_or_module_holds_a_control_character():
    tracked = subprocess.run(["git", "ls-files", "*.md", "*.py", "*.yml", "*.toml"], cwd=ROOT,
                             capture_output=True, text=True)
    paths = [ROOT / p for p in tracked.stdout.split()] if tracked.returncode == 0 else []
    paths = paths or [*DOCS.rglob("*.md"), *ROOT.glob("*/**/*.py")]
    found = [f"{p.relative_to(ROOT)}:{n}: {line!r}" for p in paths if p.is_file()
             for n, line in enumerate(p.read_text().split("\n"), 1) if _CONTROL.search(line)]
    found += [f"{source} (generated)" for source, text in SOURCES.items()
              if source.startswith("proofs/") and _CONTROL.search(text)]
    assert not found, "\n".join(found)


#: Where each source directory's modules live in the installed package (``pyproject.toml``).
PACKAGES = {"relaycore": "relaycore", "reference": "relaycore.reference", "fast": "relaycore.fast",
            "proofs": "relaycore.proofs"}


def _modules_with_examples():
    """Every module whose docstrings hold an example (``>>>``), by its installed name."""
    names = []
    for directory, package in PACKAGES.items():
        for path in sorted((ROOT / directory).rglob("*.py")):
            if ">>>" in path.read_text(encoding="utf-8"):
                parts = path.relative_to(ROOT / directory).with_suffix("").parts
                names.append(".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts))))
    return names


@pytest.mark.parametrize("module", _modules_with_examples())
def test_docstring_examples_run(module):
    """Each docstring example runs and prints what it shows (``...`` stands for any text)."""
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted and not result.failed, f"{module}: {result.failed} of {result.attempted} examples failed"
