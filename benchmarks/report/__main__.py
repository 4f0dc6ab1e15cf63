"""``python -m benchmarks.report --help``."""

import sys

from benchmarks.report.cli import main

sys.exit(main())
