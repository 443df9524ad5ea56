"""`python -m spurgen.dashboard`: the same as `spurgen dashboard` (spurgen/dashboards/command.py)."""

import sys

from spurgen.dashboards.command import main

if __name__ == "__main__":
    sys.exit(main())
