"""``python -m cosigner`` is the ``cosigner`` command."""

import sys

from cosigner.cli import main

sys.exit(main())
