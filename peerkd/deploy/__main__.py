"""``python -m peerkd.deploy``: the same as ``peerkd-deploy``."""

import sys

from peerkd.deploy.cli import main

sys.exit(main())
