"""`python -m fastmail.testing.authd`: the reference auth server's command line."""

import sys

from fastmail.testing.authd.cli import main

sys.exit(main())
