"""Package layering: inference code never depends on training code, and every module imports.

Rule: no module outside musicgen_jax/train/ imports musicgen_jax.train, except musicgen_jax/cli.py,
which may import it lazily inside the functions that run the train/prepare/export commands (building
the parser must not import it), and musicgen_jax/aot/train.py, the train-step compile report, a tool
over training (musicgen_jax.aot imports it only when a train report is asked for). The imports are checked in fresh interpreters (this process has
imported whatever other tests loaded) and statically over the source. Nothing here imports torch.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "musicgen_jax")
TRAIN = "musicgen_jax.train"
# cli.py: the functions that may not import training code (they run whatever the command is)
PARSER_FUNCTIONS = {"build_parser", "main"}
TRAIN_TOOLS = {"musicgen_jax.aot.train"}  # tools over training: may import it (not imported by inference)


def _module_name(path: str) -> str:
    rel = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join(rel)


def _source_files() -> list[str]:
    """Every .py file of the package, found on disk (walking with pkgutil would import them)."""
    found = []
    for folder, dirs, files in os.walk(PACKAGE):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        found += [os.path.join(folder, f) for f in sorted(files) if f.endswith(".py")]
    return found


def _inference_modules() -> list[str]:
    """Every module outside musicgen_jax.train, less cli (checked through its parser) and testing
    (test helpers, not inference)."""
    names = [_module_name(p) for p in _source_files()]
    return [n for n in names if not (n == TRAIN or n.startswith(TRAIN + ".")
                                     or n in ("musicgen_jax.cli", "musicgen_jax.testing", *TRAIN_TOOLS))]


def _run(code: str) -> dict:
    """Run code in a fresh interpreter at the repository root; it prints one JSON object last."""
    env = dict(os.environ, JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"subprocess failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _train_modules_after(setup: str) -> list[str]:
    return _run(setup + textwrap.dedent(f"""
        import json, sys
        print(json.dumps({{"train": sorted(m for m in sys.modules
                                           if m == {TRAIN!r} or m.startswith({TRAIN!r} + "."))}}))
        """))["train"]


def test_inference_modules_do_not_import_train():
    modules = _inference_modules()
    assert "musicgen_jax.musicgen" in modules and "musicgen_jax.codec" in modules
    if not _train_modules_after(f"import importlib\nfor name in {modules!r}: importlib.import_module(name)\n"):
        return
    culprits = {}
    for name in modules:  # one interpreter per module, so that each culprit is named
        loaded = _train_modules_after(f"import importlib; importlib.import_module({name!r})\n")
        if loaded:
            culprits[name] = loaded
    assert culprits, "training code imported by the inference modules together, by none alone"
    pytest.fail(f"inference modules that import training code: {culprits}")


def test_cli_parser_does_not_import_train():
    loaded = _train_modules_after("from musicgen_jax.cli import build_parser\nbuild_parser()\n")
    assert not loaded, f"importing musicgen_jax.cli and building its parser imported {loaded}"


class _TrainImports(ast.NodeVisitor):
    """Collects (line, enclosing function or None, imported name) for imports of musicgen_jax.train,
    absolute, relative, or importlib.import_module / __import__ with a constant name."""

    def __init__(self, module: str, is_package: bool):
        self.package = module if is_package else module.rpartition(".")[0]
        self.functions: list[str] = []
        self.found: list[tuple[int, str | None, str]] = []

    def _add(self, node: ast.AST, name: str) -> None:
        if name == TRAIN or name.startswith(TRAIN + "."):
            self.found.append((node.lineno, self.functions[0] if self.functions else None, name))

    def _function(self, node) -> None:
        self.functions.append(node.name)
        self.generic_visit(node)
        self.functions.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = _function

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            parts = self.package.split(".")
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        for name in [base] + [f"{base}.{alias.name}" for alias in node.names]:  # from musicgen_jax import train
            if name == TRAIN or name.startswith(TRAIN + "."):
                self._add(node, name)
                break

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if (name in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            self._add(node, node.args[0].value)
        self.generic_visit(node)


def _violations() -> list[str]:
    bad = []
    train_dir = os.path.join(PACKAGE, "train") + os.sep
    for path in _source_files():
        if path.startswith(train_dir) or _module_name(path) in TRAIN_TOOLS:
            continue
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        visitor = _TrainImports(_module_name(path), path.endswith("__init__.py"))
        visitor.visit(tree)
        rel = os.path.relpath(path, ROOT)
        for line, function, name in visitor.found:
            if rel == os.path.join("musicgen_jax", "cli.py") and function not in (None, *PARSER_FUNCTIONS):
                continue  # a command function importing training code when the command runs
            where = f"in {function}()" if function else "at module level"
            bad.append(f"{rel}:{line} imports {name} {where}")
    return bad


def test_no_static_imports_of_train_outside_train():
    bad = _violations()
    assert not bad, "training code imported outside musicgen_jax/train/ (cli.py: only inside the " \
                    "train/prepare/export command functions):\n  " + "\n  ".join(bad)


def test_static_check_sees_imports():
    """The checker itself: each spelling of a train import is found."""
    source = textwrap.dedent("""
        import musicgen_jax.train.loop
        from musicgen_jax.train import cli
        from musicgen_jax import train
        from .train.export import export_checkpoint
        from . import train as t
        def run():
            import importlib
            importlib.import_module("musicgen_jax.train.prepare")
        import musicgen_jax.training_notes, musicgen_jax.trainer
        from .sampling import sample
        """)
    visitor = _TrainImports("musicgen_jax.cli", is_package=False)
    visitor.visit(ast.parse(source))
    assert {(line, fn) for line, fn, _ in visitor.found} == {
        (2, None), (3, None), (4, None), (5, None), (6, None), (9, "run")}


def test_every_module_imports():
    result = _run("""
        import importlib, json, pkgutil, sys, traceback
        import musicgen_jax
        names = ["musicgen_jax"]
        failed = {}
        def onerror(name):
            failed[name] = traceback.format_exc(limit=3)
        names += [m.name for m in pkgutil.walk_packages(musicgen_jax.__path__, "musicgen_jax.", onerror=onerror)]
        for name in names:
            try:
                importlib.import_module(name)
            except Exception:
                failed[name] = traceback.format_exc(limit=3)
        print(json.dumps({"names": names, "failed": failed, "torch": "torch" in sys.modules}))
        """)
    assert not result["failed"], "modules that fail to import:\n" + "\n".join(
        f"{name}:\n{tb}" for name, tb in result["failed"].items())
    on_disk = {_module_name(p) for p in _source_files()}
    assert on_disk <= set(result["names"]), f"modules on disk not found by pkgutil: {on_disk - set(result['names'])}"
    assert not result["torch"], "importing the package imports torch (not a dependency of the wheel)"


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
