"""``python -m datamodules.generate``: see ``datamodules.generate.cli`` (``--help`` documents every option)."""

import sys

from datamodules.generate.cli import main

if __name__ == "__main__":
    sys.exit(main())
