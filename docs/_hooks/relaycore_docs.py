"""mkdocs hooks for the relaycore site.

* MathJax 3 is served from the site itself: ``tex-svg-full.js`` comes from the PyPI package
  ``django-static-mathjax`` (the ``docs`` extra), never from a CDN, so math renders offline.
* Every module of ``relaycore.proofs`` becomes a page ``proofs/<module>.md``: its docstring (the
  statement and the proof) followed by its code (the machine check that ``tests/test_proofs.py``
  runs), so the site shows each claim with the check behind it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from pathlib import Path

from mkdocs.structure.files import File

#: (module, title in the navigation), in the order the math is taught.
PROOFS = [
    ("merge_monoid", "The merge is a commutative monoid"),
    ("relay_identity", "The relay identity"),
    ("causal_split", "Causal masking across prefix and request"),
    ("levels", "Levels and boundaries are free"),
    ("error_bound", "The floating-point error bound"),
]
MATHJAX_SITE_PATH = "assets/mathjax/tex-svg-full.js"


def mathjax_source() -> Path:
    """Path of the vendored MathJax 3 ``es5/tex-svg-full.js``."""
    try:
        import mathjax
    except ImportError as exc:
        raise RuntimeError("the docs need MathJax from PyPI: pip install -e '.[docs]' (django-static-mathjax)") from exc
    path = Path(mathjax.__file__).parent / "static" / "mathjax" / "es5" / "tex-svg-full.js"
    if not path.is_file():
        raise RuntimeError(f"django-static-mathjax is installed but {path} is missing")
    return path


def proof_markdown(module_name: str) -> str:
    """The page of one proof module: docstring as prose, the rest of the module as code."""
    module = importlib.import_module(f"relaycore.proofs.{module_name}")
    source = inspect.getsource(module)
    body = ast.parse(source).body
    code = "\n".join(source.splitlines()[body[0].end_lineno :]).strip("\n")
    doc = inspect.getdoc(module)
    title, _, rest = doc.partition("\n")
    checks = [name for name, fn in inspect.getmembers(module, inspect.isfunction) if name.startswith("check_") and fn.__module__ == module.__name__]
    lines = [
        f"# {title.rstrip('.')}",
        "",
        f"*Module `relaycore.proofs.{module_name}` (`proofs/{module_name}.py`). Its machine checks "
        f"({', '.join(f'`{c}`' for c in checks)}) run in `tests/test_proofs.py`; run one yourself with "
        f"`python -c \"from relaycore.proofs.{module_name} import {checks[0]}; {checks[0]}()\"`.*",
        "",
        rest.strip(),
        "",
    ]
    if module_name == "error_bound":
        lines += _ratio_table(module)
    lines += ["## The code", "", "The module below the docstring: its helpers and its `check_*` functions.", "", "```python", code, "```", ""]
    return "\n".join(lines)


def _ratio_table(module) -> list:
    ratios = module.typical_ratios()
    rows = [
        "## Observed error / bound on typical inputs",
        "",
        "Measured when this site was built (`typical_ratios()`: 6 problems per format, 48 keys of "
        "head dimension 16 in two relay parts, blocks of 16). A ratio of 1 would mean the bound is "
        "attained; *default steps* is the bound for any blocking (what `relaycore.testing` uses unless "
        "it is given the steps), *counted steps* the one with this blocking's real step count (what "
        "the Triton tests use).",
        "",
        "| format | out, default steps | out, counted steps | lse, default steps | lse, counted steps |",
        "| --- | --- | --- | --- | --- |",
    ]
    for dtype, r in ratios.items():
        rows.append(f"| {dtype} | {r['out']:.2g} | {r['out_counted']:.2g} | {r['lse']:.2g} | {r['lse_counted']:.2g} |")
    return rows + [""]


def on_files(files, config):
    files.append(File.generated(config, MATHJAX_SITE_PATH, abs_src_path=str(mathjax_source())))
    for name, _ in PROOFS:
        files.append(File.generated(config, f"proofs/{name}.md", content=proof_markdown(name)))
    return files
