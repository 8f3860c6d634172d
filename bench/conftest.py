"""pytest-benchmark set-up for bench/ (not collected by the plain ``pytest`` run: testpaths = tests).

Run: ``pytest --benchmark-only bench/`` (bench/README.md lists the environment knobs).
Unlike tests/, nothing here sets TRITON_INTERPRET: interpreted kernels are not worth timing.
The harness modules (harness.py, memory.py, ...) import each other by plain name: pytest puts
this folder (it has no __init__.py) on sys.path, as running a script from it does.
"""
