"""The shape of the code that the architecture relies on: layers import one way, light entry points, tasks decided
in one module."""
import ast
import os
import subprocess
import sys

from conftest import CONFIGS, ROOT

PACKAGE = os.path.join(ROOT, "ptft_jax")


def _modules():
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                out[name] = path
    return out


def test_entry_points_and_config_errors_do_not_import_jax(tmp_path):
    code = ("import sys, ptft_jax, ptft_jax.text, ptft_jax.config, ptft_jax.dataset, ptft_jax.prepare\n"
            "ptft_jax.load_config(sys.argv[1])\n"
            "assert 'jax' not in sys.modules and 'grain' not in sys.modules, sorted(sys.modules)\n")
    p = subprocess.run([sys.executable, "-c", code, os.path.join(CONFIGS, "digits_mlp_pretrain.py")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    # a misspelt key on the command line: one sentence before jax is ever imported (-X importtime lists it)
    p = subprocess.run([sys.executable, "-X", "importtime", os.path.join(ROOT, "launch.py"),
                        f"--config={os.path.join(CONFIGS, 'digits_mlp_pretrain.py')}", f"--workdir={tmp_path}",
                        "--config.optim.lrr=1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "did you mean 'optim.lr'" in p.stderr
    assert not [line for line in p.stderr.splitlines() if line.rstrip().endswith("| jax")]


def test_package_modules_import_one_way():
    """No cycle among the package's module-level imports (parents count: importing a.b runs a/__init__.py)."""
    modules = _modules()
    edges = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.parse(open(path).read()).body:
            targets = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module \
                else []
            for t in targets:
                while t and t not in modules:
                    t = t.rpartition(".")[0]
                parts = t.split(".") if t else []
                for i in range(1, len(parts) + 1):
                    dep = ".".join(parts[:i])
                    if dep in modules and dep != name and not name.startswith(dep + "."):
                        edges[name].add(dep)
    state = {}

    def visit(m, path):
        state[m] = "open"
        for n in sorted(edges[m]):
            assert state.get(n) != "open", f"import cycle: {' -> '.join(path + [n])}"
            if n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [m])


def test_only_tasks_py_compares_task_names():
    """A run's task is an object (tasks.py); no other module asks which one it is by name."""
    found = []
    for name, path in _modules().items():
        if name == "ptft_jax.tasks":
            continue
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                names = {getattr(s, "id", getattr(s, "attr", None)) for s in sides}
                consts = {s.value for s in sides if isinstance(s, ast.Constant)}
                keys = {getattr(s.slice, "value", None) for s in sides if isinstance(s, ast.Subscript)}
                # ("mlm" alone also names BERT's masked-LM head: a task only beside `task` or a ["task"] lookup)
                if names & {"task", "task_name"} or "task" in keys or consts & {"classify_image", "classify_text"}:
                    found.append(f"{name}:{node.lineno}")
    assert not found, found
