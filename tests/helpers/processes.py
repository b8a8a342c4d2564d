"""Running run.py in a fresh process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_py(*args: str, cwd: Path = ROOT, timeout: int = 300,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python run.py *args``; ``env`` replaces the environment (default: this one)."""
    env = {**(os.environ if env is None else env), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)
