"""`python -m gateway ...` runs the `whipgate` command line."""

import sys

from gateway.cli import main

sys.exit(main())
