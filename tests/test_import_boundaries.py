"""The rings stay honest: core is engine-free, and importing the package is cheap."""

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "speculators_kit"
CORE_ALLOWED = {"torch", "safetensors", "pydantic", "speculators_kit", "__future__"}
STDLIB = set(sys.stdlib_module_names)


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def test_core_imports_only_torch_safetensors_pydantic():
    offenders = {}
    for path in (PKG / "core").rglob("*.py"):
        bad = imported_roots(path) - CORE_ALLOWED - STDLIB
        if bad:
            offenders[path.name] = sorted(bad)
    assert offenders == {}


def test_train_never_imports_vllm():
    for path in (PKG / "train").rglob("*.py"):
        assert "vllm" not in imported_roots(path), path


def test_package_import_is_cheap():
    code = (
        "import sys, speculators_kit, speculators_kit.core.format, speculators_kit.cli;"
        "heavy = [m for m in ('vllm', 'deepspeed', 'transformers') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
