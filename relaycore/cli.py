"""The ``relaycore`` console command.

``relaycore verify`` checks a backend (or any user function) against the oracle;
``relaycore bench`` times the backends against their peers and the physical floor. Each
subcommand lives in its own module, which exposes ``add_arguments(parser)`` and ``main(args)``;
only the module of the subcommand that runs is imported, so one cannot break another.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

SUBCOMMANDS = {
    "verify": ("relaycore.verify", "check a backend or a user function against the float64 oracle"),
    "bench": ("relaycore.bench.cli", "time relaycore against its peers and the physical floor"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="relaycore", description="RelayAttention, exact.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(SUBCOMMANDS) + "}")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == chosen:
            importlib.import_module(module).add_arguments(p)
    args = parser.parse_args(argv)
    return int(importlib.import_module(SUBCOMMANDS[args.command][0]).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
