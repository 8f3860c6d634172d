"""pytest-benchmark set-up for bench/ (not collected by the plain ``pytest`` run: testpaths = tests).

Run: ``pytest --benchmark-only bench/`` (bench/README.md lists the environment knobs).
Unlike tests/, nothing here sets TRITON_INTERPRET: interpreted kernels are not worth timing.
"""


def pytest_configure(config):
    # pyproject's addopts hold --benchmark-disable (so the test suite runs benchmark-using
    # tests once); pytest-benchmark refuses --benchmark-only together with it. Asking for
    # --benchmark-only on bench/ means "run the benchmarks": enable them. This hook runs
    # before pytest-benchmark's own (trylast) pytest_configure builds its session.
    if config.getoption("benchmark_only", False):
        config.option.benchmark_enable = True
