"""``python -m compressor`` is the ``compress`` command."""

import sys

from .cli import main

sys.exit(main())
