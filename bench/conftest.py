"""pytest-benchmark set-up for bench/ (not collected by the plain ``pytest`` run: testpaths = tests).

Run: ``pytest --benchmark-only bench/`` (bench/README.md lists the environment knobs).
Unlike tests/, nothing here sets TRITON_INTERPRET: interpreted kernels are not worth timing.
"""
