"""`python -m fastmail.testing.backend`: the fake backend's command line."""

import sys

from fastmail.testing.backend.cli import main

sys.exit(main())
