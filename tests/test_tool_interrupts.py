"""SIGTERM (what a service manager sends) and SIGINT stop a tool cleanly: one line, the conventional
exit status, no traceback, no temporary file, and the previous output left as it was."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sltnet.contract import Manifest

from helpers import CLASS_NAMES, TINY_BASELINE, make_weights

ROOT = Path(__file__).resolve().parent.parent


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from " + args[0] + " import main; sys.exit(main(sys.argv[1:]))", *args[1:]],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )


def wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the tool never reached the point to interrupt"
        time.sleep(0.05)


def stop(process: subprocess.Popen, signum: int) -> tuple[int, str]:
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


def temporaries(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_synth_run_stops_in_one_line(tmp_path, signum, status):
    out = tmp_path / "data"
    process = start(
        ["sltnet.tools.synth", str(out), "--split", "big", "--videos", "400", "--frames", "30", "--size", "128"]
    )
    wait_for(lambda: any(out.rglob("*.jpg")), process)
    code, stderr = stop(process, signum)
    assert code == status
    assert stderr.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in stderr
    assert temporaries(tmp_path) == []
    assert not (out / "annotations" / "big.json").exists()


@pytest.mark.parametrize("signum, status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interrupted_export_keeps_the_previous_export(tmp_path, signum, status):
    weights = make_weights(tmp_path)["baseline"]
    out = tmp_path / "engines"
    argv = ["export.cli", "--config-file", TINY_BASELINE, "--weights", str(weights), "--class-names", CLASS_NAMES]
    first = start([*argv, "--out", str(out)])
    assert first.wait(timeout=300) == 0, first.stderr.read()
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    process = start([*argv, "--out", str(out), "--input-size", "96", "96"])
    wait_for(lambda: any(tmp_path.glob(".engines.new-*.tmp/*.onnx")), process)
    code, stderr = stop(process, signum)
    assert code == status
    assert stderr.strip().splitlines()[-1] == "error: interrupted" and "Traceback" not in stderr
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert Manifest.load(out).input.size == (128, 128)
    assert temporaries(tmp_path) == []
