"""`eva` is the pure core: importing every module of it must load no ray, vllm or trl."""

import pkgutil
import subprocess
import sys

import eva


def test_import_eva_loads_no_engine():
    modules = [m.name for m in pkgutil.walk_packages(eva.__path__, "eva.")]
    assert len(modules) >= 9, modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'vllm', 'trl'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"eva imports engines: {out.stdout.strip()}"
