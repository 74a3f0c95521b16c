import importlib

import pytest

STAGES = [
    "lowssl",
    *(f"lowssl.{stage}" for stage in ("pretrain", "evaluate", "semisup", "detection", "results")),
]


@pytest.mark.parametrize("package", STAGES)
def test_stage_package_imports(package):
    module = importlib.import_module(package)
    assert module.__name__ == package
