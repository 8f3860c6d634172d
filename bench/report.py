"""Benchmark report: one table of time, peak extra memory, GFLOP/s, share of the machine's
matmul throughput and error, for pyramid attention implementations in the PANet config.

    python bench/report.py [--device cpu|cuda] [--sizes 32 48 64 96] [--backward]
                           [--dtype float32 bfloat16 ...] [--out [FILE]]

``python bench/report.py --help`` lists every option; bench/README.md explains the columns.
The logic lives in ``tri_panet.benchmarking`` (importable when the package is installed;
``tri_panet bench`` calls the same ``main``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tri_panet.benchmarking import main as _main


def main(argv: Sequence[str] | None = None) -> int:
    """Run the report with command-line arguments ``argv`` (default: sys.argv[1:])."""
    return _main(argv)


if __name__ == "__main__":
    sys.exit(main())
