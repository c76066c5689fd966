"""``python -m benchmarks``: the benchmark suite (see benchmarks/suite.py and benchmarks/README.md)."""

import sys

from benchmarks.suite import main

sys.exit(main())
