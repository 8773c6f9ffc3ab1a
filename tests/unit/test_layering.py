"""Layering is checked, not hoped for: ucloud_common imports no daemon, no daemon imports another, only
ucloud_common.ceph imports the Ceph bindings, only ucloud_common.store the etcd client."""

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_import_contracts_hold() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint)], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


def test_no_unused_imports_undefined_names_or_syntax_errors() -> None:
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "--select", "F,E9", "--exclude", ".venv", "--output-format",
                             "concise", "."], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_only_the_store_imports_grpc_or_the_etcd_client() -> None:
    """Every failure of gRPC and pyetcd is mapped in one place (ucloud_common/store/failures.py),
    which holds only if nothing else calls them."""
    store = REPO / "ucloud_common" / "store"
    offenders = []
    for path in sorted(REPO.glob("ucloud_*/**/*.py")):
        if path.is_relative_to(store):
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            offenders += [f"{path.relative_to(REPO)} imports {name}" for name in names
                          if name.split(".")[0] in ("grpc", "pyetcd")]
    assert offenders == []
