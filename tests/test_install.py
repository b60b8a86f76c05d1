"""``pip install .`` into a fresh virtual environment (no system site-packages) gives a working
package: the declared dependencies alone embed an image with the real CNN (default ONNX Runtime).

Versions are pinned to this environment's (a constraints file), so pip takes them from its cache or
the registry exactly as tested; the test skips only when the registry cannot be reached.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import pytest

from helpers import CALTECH, MOBILENET_FILE, TORCH_CACHE

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.install


def _registry_reachable() -> str | None:
    """None if pip can reach its package index, else pip's answer."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "pip"], capture_output=True, text=True, timeout=120
    )
    return None if proc.returncode == 0 else (proc.stderr or proc.stdout)[-500:]


#: Variables that would make the fresh venv's pip or Python see this environment's packages.
_LEAKY_VARS = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP", "PYTHONUSERBASE")

_LIST_PINS = """
import importlib.metadata as md
names = {(d.metadata["Name"], d.version) for d in md.distributions() if d.metadata["Name"]}
print("\\n".join(sorted(f"{n}=={v}" for n, v in names if n.lower() != "revsearch")))
"""


def _clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in _LEAKY_VARS}


def _constraints(path: Path) -> Path:
    """The versions of every distribution installed in this venv (except revsearch itself), read by
    a plain interpreter of the venv: not this pytest process, whose sys.path tests may have changed."""
    run = subprocess.run(
        [sys.executable, "-c", _LIST_PINS], capture_output=True, text=True, cwd=path.parent, env=_clean_env()
    )
    assert run.returncode == 0, run.stderr[-2000:]
    pins = run.stdout
    path.write_text(pins)
    return path


def _pip_failure(stderr: str) -> str:
    """pip's explanation of a failed install: the resolver's conflict lines first, then the tail."""
    lines = [line for line in stderr.splitlines() if "is ignored: it is neither" not in line]
    conflict = [line for line in lines if "conflict" in line.lower() or "requires" in line or "because" in line]
    return "\n".join(conflict[:40] + ["..."] + lines[-60:])


def test_pip_install_into_a_fresh_venv_embeds_an_image(tmp_path):
    if not MOBILENET_FILE.exists() or not CALTECH.is_dir():
        pytest.skip(f"needs the team share's weights and images ({MOBILENET_FILE.parent}, {CALTECH})")
    unreachable = _registry_reachable()
    if unreachable:
        pytest.skip(f"the package registry cannot be reached, so nothing can be installed: {unreachable}")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    source = tmp_path / "src"  # a copy: the build writes build/ and *.egg-info next to the sources
    shutil.copytree(
        ROOT,
        source,
        ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "bench", "tests", "docs"),
    )
    started = time.monotonic()
    install = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--no-compile",
            str(source),
            "-c",
            str(_constraints(tmp_path / "constraints.txt")),
        ],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=tmp_path,
        env=_clean_env(),
    )
    assert install.returncode == 0, _pip_failure(install.stdout + install.stderr)
    installed_s = time.monotonic() - started
    image = sorted((CALTECH / "airplanes").glob("image_*.jpg"))[0]
    code = (
        "import revsearch, numpy as np\n"
        "from revsearch import Embedder\n"
        "assert 'site-packages' in revsearch.__file__, revsearch.__file__\n"
        "e = Embedder(backbone='mobilenet_v2', weights='IMAGENET1K_V1')\n"
        f"v = e.embed_paths([{str(image)!r}], progress=False).vectors\n"
        "print(e.config.runtime, v.shape, round(float(np.linalg.norm(v[0])), 4))\n"
    )
    env = _clean_env()
    env["TORCH_HOME"] = str(TORCH_CACHE)
    env.pop("REVSEARCH_RUNTIME", None)
    run = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.strip().splitlines()[-1] == "onnxruntime (1, 1280) 1.0"
    cli = subprocess.run(
        [str(env_dir / "bin" / "revsearch"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert cli.returncode == 0 and "index" in cli.stdout
    print(f"pip install . took {installed_s:.0f} s")
