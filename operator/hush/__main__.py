"""``python -m hush`` is the same as the ``hush`` console script."""

import sys

from hush.cli.main import main

sys.exit(main())
