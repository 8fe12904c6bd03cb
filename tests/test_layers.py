"""The package's shape: layers import only downward (import-linter contracts in pyproject.toml), no module
or function is a wall of code, and the settings know the same queue strategies as the queue package."""
import ast
import subprocess
import sys
from pathlib import Path

from backend.config import QUEUE_STRATEGIES
from backend.queue import STRATEGIES
from tests.helpers import REPO_ROOT


def test_layers_import_only_downward():
    lint = Path(sys.executable).parent / "lint-imports"
    done = subprocess.run([str(lint), "--no-cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 kept, 0 broken" in done.stdout


def test_no_module_is_a_wall_of_code():
    sizes = {p.relative_to(REPO_ROOT): len(p.read_text().splitlines()) for p in (REPO_ROOT / "backend").rglob("*.py")}
    assert max(sizes.values()) <= 420, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]


def test_no_function_is_over_60_lines():
    lengths = {f"{p.relative_to(REPO_ROOT)}:{node.name}": node.end_lineno - node.lineno + 1
               for p in (REPO_ROOT / "backend").rglob("*.py") for node in ast.walk(ast.parse(p.read_text()))
               if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    assert max(lengths.values()) <= 60, sorted(lengths.items(), key=lambda kv: -kv[1])[:3]


def test_settings_accept_exactly_the_queue_strategies_that_need_labels():
    assert set(QUEUE_STRATEGIES) == {name for name in STRATEGIES if name != "cold_start"}
