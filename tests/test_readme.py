"""The README's code runs as written: it is the first thing a user copies."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_python_block_of_the_readme_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert blocks, "the README has no python example"
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, str(README), "exec"), namespace)
        out, lse = namespace["out"], namespace["lse"]
        assert out.shape == (4, 8, 64) and lse.shape == (4, 8)
