"""The layout rules of DESIGN.md, checked on the source: the oracle and the fast paths never
import each other, both lean only on the neutral contract modules, and every GPU test lives
where the GPU suite runs it."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: The contract modules reference/ and fast/ may import (besides their own package).
NEUTRAL = {"relaycore", "relaycore.types", "relaycore.state", "relaycore.constants", "relaycore.validation",
           "relaycore.buffers"}


def _imports(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []


@pytest.mark.parametrize("directory, own, forbidden", [
    ("reference", "relaycore.reference", "relaycore.fast"),
    ("fast", "relaycore.fast", "relaycore.reference"),
])
def test_oracle_and_fast_paths_stay_apart(directory, own, forbidden):
    for path in sorted((ROOT / directory).rglob("*.py")):
        for module, names in _imports(path):
            if not module.startswith("relaycore"):
                continue
            where = f"{path.relative_to(ROOT)} imports {module}"
            assert not module.startswith(forbidden), where
            if module.startswith(own):
                continue
            targets = {f"{module}.{n}" for n in names} if module == "relaycore" else {module}
            assert targets <= NEUTRAL, where


def test_every_gpu_test_is_where_the_gpu_suite_runs_it():
    """``scripts/gpu_suite.sh`` runs ``pytest -m gpu tests/gpu`` (collecting all of ``tests/``
    would import the interpreter tests, which set ``TRITON_INTERPRET``): a test marked ``gpu``
    anywhere else would never run."""
    assert '"$ROOT/tests/gpu"' in (ROOT / "scripts" / "gpu_suite.sh").read_text()
    outside = [path.name for path in sorted((ROOT / "tests").glob("*.py"))
               if any(isinstance(node, ast.Attribute) and node.attr == "gpu" and isinstance(node.value, ast.Attribute)
                      and node.value.attr == "mark" for node in ast.walk(ast.parse(path.read_text())))]
    assert outside == [], f"tests marked gpu outside tests/gpu: {outside}"
