"""The architecture, checked: layers (import-linter's contracts in pyproject.toml), no
import-time cycle, modules of a readable size. docs/architecture.md explains them."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import guardrail

ROOT = Path(__file__).resolve().parent.parent
MAX_MODULE_LINES = 500


def _modules() -> list[str]:
    found = pkgutil.walk_packages(guardrail.__path__, prefix="guardrail.")
    return sorted(m.name for m in found if m.name != "guardrail.__main__")  # it runs the CLI


def test_the_layers_hold() -> None:
    # In its own process: import-linter configures logging, which would silence ours.
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, importlinter.cli as c; sys.exit(c.lint_imports(no_cache=True))",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


def test_every_module_imports_first_without_a_cycle() -> None:
    """Each module imported first, in a fresh set of guardrail modules: an import-time
    cycle shows up as an ImportError for the module that starts it."""
    script = (
        "import importlib, sys\n"
        f"names = {_modules()!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] == 'guardrail']:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as exc:\n"
        "        failed.append(f'{name}: {exc!r}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(_modules()) > 50  # the walk found the package, not an empty list


def test_no_module_is_over_the_size_limit() -> None:
    sizes = {
        str(path.relative_to(ROOT)): sum(1 for _ in path.open(encoding="utf-8"))
        for path in (ROOT / "guardrail").rglob("*.py")
    }
    too_big = {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES}
    assert not too_big, f"split these (one idea per module): {too_big}"
    assert len(sizes) > 50
