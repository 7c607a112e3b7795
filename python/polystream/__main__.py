"""`python -m polystream <command>`: the CLI (docs/cli.md)."""

import sys

from polystream.cli import main

sys.exit(main())
