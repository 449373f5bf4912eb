"""Every machine check of every proof module in ``relaycore.proofs``."""

import importlib
import inspect
import pkgutil

import pytest

import relaycore.proofs

MODULES = [importlib.import_module(f"relaycore.proofs.{m.name}") for m in pkgutil.iter_modules(relaycore.proofs.__path__)]
CHECKS = [
    pytest.param(fn, id=f"{module.__name__.rsplit('.', 1)[-1]}.{name}")
    for module in MODULES
    for name, fn in inspect.getmembers(module, inspect.isfunction)
    if name.startswith("check_") and fn.__module__ == module.__name__
]
CLAIMS = ["relay_identity", "merge_monoid", "causal_split", "error_bound", "levels"]


def test_every_claim_has_checks():
    checked = {p.id.split(".")[0] for p in CHECKS}
    assert set(CLAIMS) <= checked, sorted(set(CLAIMS) - checked)


@pytest.mark.parametrize("check", CHECKS)
def test_check(check):
    check()
