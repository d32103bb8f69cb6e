"""How the project is wired: what cnnviz/ may import (the rest is in pyproject.toml's import
contracts, checked by `lint-imports`), the installed `cnnviz` command, and the CI command."""
import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from .conftest import ROOT

# Calls that run or import another file or module by name or path.
_LOADERS = {"import_module", "__import__", "run_module", "run_path", "spec_from_file_location",
            "SourceFileLoader", "exec", "execfile", "compile"}
_PAGES = re.compile(r"(^|[/\\.])pages([/\\.]|$)")


def page_imports(source: str) -> list[str]:
    """What in `source` imports or runs the pages/ folder (statements and loader calls)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name == "pages" or a.name.startswith("pages.")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "pages" or node.module.startswith("pages."):
                found.append(node.module)
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", None)
            if name in _LOADERS:
                for arg in ast.walk(node):
                    if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _PAGES.search(arg.value):
                        found.append(f"{name}({arg.value!r})")
    return found


def test_the_check_sees_page_imports():
    assert page_imports("import pages.home\nfrom pages import saliency\nfrom pages.limits import x")
    assert page_imports("import runpy\nrunpy.run_path('pages/home.py')")
    assert page_imports("import importlib\nimportlib.import_module('pages.home')")
    # Naming a page for st.navigation, or cnnviz.app's own pages module, is not importing pages/.
    assert not page_imports("st.Page('pages/home.py')\nfrom . import pages\nfrom cnnviz.app.pages import PAGES")


def test_cnnviz_never_imports_the_pages():
    files = sorted((ROOT / "cnnviz").rglob("*.py"))
    assert len(files) > 10
    bad = {str(f.relative_to(ROOT)): hits for f in files if (hits := page_imports(f.read_text()))}
    assert not bad, f"pages/ are views over the backend; cnnviz/ must not import them: {bad}"


def test_version_is_written_once():
    import cnnviz

    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["version"] == cnnviz.__version__


def test_the_cnnviz_command_is_python_m_cnnviz():
    exe = shutil.which("cnnviz")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("the `cnnviz` console script is not installed (pip install -e .)")
        pytest.skip("the `cnnviz` console script is not installed (pip install -e .)")
    script = subprocess.run([exe, "--help"], capture_output=True, text=True, timeout=120)
    module = subprocess.run([sys.executable, "-m", "cnnviz", "--help"], capture_output=True, text=True,
                            timeout=120, cwd=ROOT)
    assert script.returncode == module.returncode == 0, script.stderr + module.stderr
    assert script.stdout == module.stdout
    assert "predict" in script.stdout


def readme_test_command() -> str:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"\*\*Install and run the tests\*\*.*?```bash\n(.*?)\n```", readme, re.S)
    assert block, "README: no test command block after **Install and run the tests**"
    return block.group(1).strip()


def test_ci_runs_exactly_the_readme_test_command():
    lines = [l.strip() for l in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert lines[-1] == readme_test_command()
