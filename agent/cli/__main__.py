"""`python -m agent.cli` is `magnet-agent`."""

import sys

from agent.cli.main import main

sys.exit(main())
