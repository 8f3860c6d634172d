"""pyproject.toml lists every subpackage (the kernels/ mapping rules out automatic discovery)."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "tri_panet").rglob("__init__.py")} | {
        "tri_panet.kernels"
    }
    assert listed == on_disk, f"add to / remove from [tool.setuptools] packages: {sorted(listed ^ on_disk)}"
