"""Create the benchmark-only virtual environments of the peer libraries.

Each peer gets ``benchmarks/.envs/NAME`` with its packages installed from PyPI
by name. A stamp file records the requirement list, so an environment is
rebuilt only when that list changes. None of this touches the project's own
dependencies.
"""

from __future__ import annotations

import json
import logging
import pathlib
import subprocess
import sys
import venv

from benchmarks.cases import PEER_REQUIREMENTS
from benchmarks.settings import ENVS_DIR

logger = logging.getLogger(__name__)

#: Seconds one pip install may take before the environment counts as failed.
INSTALL_TIMEOUT_S = 900


def env_python(name: str) -> pathlib.Path:
    return ENVS_DIR / name / "bin" / "python"


def ensure_env(name: str) -> pathlib.Path:
    """Return the interpreter of peer environment ``name``, creating it when needed.

    Raises:
        RuntimeError: pip failed; the message holds the tail of its output.
    """
    requirements = list(PEER_REQUIREMENTS[name])
    root = ENVS_DIR / name
    stamp = root / ".requirements.json"
    python = env_python(name)
    if python.exists() and stamp.exists() and json.loads(stamp.read_text()) == requirements:
        return python
    logger.info("Creating benchmark environment %s: %s", root, " ".join(requirements))
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    command = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    completed = subprocess.run(
        [*command, *requirements],
        capture_output=True,
        text=True,
        timeout=INSTALL_TIMEOUT_S,
        check=False,
    )
    if completed.returncode != 0:
        tail = (completed.stdout + completed.stderr).strip().splitlines()[-5:]
        raise RuntimeError(f"pip install in {root} failed: {' | '.join(tail)}")
    stamp.write_text(json.dumps(requirements))
    return python


def interpreter(env: str | None) -> pathlib.Path:
    """Return the Python that runs a case: a peer environment's, or this one for taskfuture."""
    if env is None:
        return pathlib.Path(sys.executable)
    return ensure_env(env)
