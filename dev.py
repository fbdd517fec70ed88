#!/usr/bin/env python3
"""Set up the project's own virtual environment and run the demo or the tests.

    python3 dev.py demo   # set up, then run the demo on the embedded default
    python3 dev.py test   # set up, then run the test suite (extra arguments go to pytest)

Only the Python standard library is used here: this runs on a machine that has nothing but python3.
"""

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / "python"
# Records which pyproject.toml the environment was installed from, so an unchanged project
# is not reinstalled on every call.
STAMP = VENV / ".sltnet-installed"

DEMO_DATA = ROOT / "datasets" / "synthetic"
DEMO_SPLIT = "synth_small_val"


def run(*command: object, env: dict = None) -> None:
    printable = " ".join(str(part) for part in command)
    print(f"+ {printable}", flush=True)
    status = subprocess.call([str(part) for part in command], cwd=ROOT, env=env)
    if status != 0:
        sys.exit(status)


def setup() -> None:
    """Create .venv and install the project (editable, with test tools) if pyproject.toml changed."""
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted and PYTHON.exists():
        return
    if not PYTHON.exists():
        print(f"creating virtual environment {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    run(PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q", "-e", ".[dev]")
    STAMP.write_text(wanted + "\n")


def demo() -> None:
    """Build the synthetic validation split and validate it with the dataset loader."""
    env = dict(os.environ, SLTNET_DATA=str(ROOT / "datasets"))
    run(BIN / "sltnet-synth", DEMO_DATA, "--split", DEMO_SPLIT, "--videos", 20, "--frames", 30,
        "--size", 256, "--seed", 1, env=env)
    run(BIN / "sltnet-data", "validate", DEMO_SPLIT, env=env)


def test(pytest_args: list) -> None:
    run(PYTHON, "-m", "pytest", "-q", *pytest_args)


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("demo", "test"):
        sys.exit(__doc__)
    setup()
    if sys.argv[1] == "demo":
        demo()
    else:
        test(sys.argv[2:])


if __name__ == "__main__":
    main()
