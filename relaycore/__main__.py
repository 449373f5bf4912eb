"""``python -m relaycore`` is the ``relaycore`` command."""

import sys

from relaycore.cli import main

sys.exit(main())
