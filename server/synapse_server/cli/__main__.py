"""``python -m synapse_server.cli``: same as the ``synapse`` console script."""

import sys

from synapse_server.cli import main

sys.exit(main())
