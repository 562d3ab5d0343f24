"""``python -m jaxprune``: the same command line as the `jaxprune` console script (`jaxprune.cli.main`)."""

import sys

from jaxprune.cli import main

if __name__ == "__main__":
    sys.exit(main())
