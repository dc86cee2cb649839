import atexit
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "configs")
# matplotlib's font cache (and train.compile_cache=auto's folder, were the tests on a GPU) go to one folder per
# session, not to ~/.cache; the subprocesses inherit it.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="ptft_tests_cache_")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)
os.environ.pop("JAX_COMPILATION_CACHE_DIR", None)


def launch(*args, devices: int | None = None, timeout: int = 300, env=None) -> subprocess.CompletedProcess:
    """Runs the real launch.py in a subprocess."""
    e = dict(os.environ)
    e.pop("XLA_FLAGS", None)
    if devices:
        e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    e.update(env or {})
    return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=e, cwd=ROOT)


class Log(list):
    def __call__(self, line):
        self.append(line)

    def text(self):
        return "\n".join(self)


@pytest.fixture
def log():
    """A log function that keeps the lines for assertions."""
    return Log()
