"""sltnet-train stopped by SIGINT / SIGTERM (one line, exit 130 / 143, no traceback, no temporary
file, no worker left) and the temporaries a SIGKILL leaves (removed by the next run)."""

import contextlib
import io
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from sltnet.engine.checkpoint import last_checkpoint
from sltnet.train import main
from tests.helpers import synthetic_data

BASELINE = "configs/synthetic/tiny_baseline.yaml"
# 64-pixel frames, two groups per batch, one DataLoader worker, a checkpoint every iteration.
TINY = [
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "64",
    "SOLVER.IMS_PER_BATCH",
    "2",
    "DATALOADER.NUM_WORKERS",
    "1",
]
START_TIMEOUT = 240  # seconds for a subprocess to import torch and train one iteration on a busy machine
STOP_TIMEOUT = 60


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A synthetic tiny train split (2 videos x 6 frames), found through $SLTNET_DATA."""
    with synthetic_data(tmp_path_factory.mktemp("data"), "synth_tiny_train", 2, 6, 64) as root:
        yield root


def temporaries(folder):
    return sorted(p.name for p in folder.glob(".*.tmp"))


def run_main(argv):
    """``sltnet-train argv`` in this process: (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        status = main(argv)
    return status, err.getvalue()


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_to_the_process_group_stops_training_in_one_line(data_root, tmp_path, signum):
    """As Ctrl-C (SIGINT) or a service manager (SIGTERM) do, the signal reaches the main process
    and its DataLoader worker, once the first checkpoint is written (during the next iterations and
    checkpoint writes; the checkpoint write itself is the next test's)."""
    output_dir = tmp_path / "run"
    command = [sys.executable, "-m", "sltnet.train", "--config-file", BASELINE, "--no-progress", "--no-eval"]
    command += ["--log-period", "1", *TINY, "SOLVER.MAX_ITER", "1000", "SOLVER.CHECKPOINT_PERIOD", "1"]
    command += ["OUTPUT_DIR", str(output_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "stderr", "w+") as stderr:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.DEVNULL, stderr=stderr, text=True, start_new_session=True
        )
        try:
            wait_until(
                lambda: (output_dir / "last_checkpoint").exists() or process.poll() is not None,
                START_TIMEOUT,
                "the first checkpoint",
            )
            assert process.poll() is None, open(tmp_path / "stderr").read()
            os.killpg(process.pid, signum)
            status = process.wait(timeout=STOP_TIMEOUT)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        stderr.seek(0)
        printed = stderr.read()

    assert status == 128 + signum, printed
    assert printed.splitlines()[-1] == "error: interrupted"
    assert "Traceback" not in printed and "DataLoader worker" not in printed, printed
    assert temporaries(output_dir) == []

    def group_is_gone():  # the worker was stopped, not left behind
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(group_is_gone, 10, "the DataLoader worker to exit")


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_while_a_checkpoint_is_written(data_root, tmp_path, monkeypatch, signum):
    """The signal arrives in the middle of torch.save of the second checkpoint (torch turns the
    interrupt into a RuntimeError of its zip writer): the temporary file goes, the first checkpoint
    stays the last one, the worker is stopped."""
    real_save = torch.save
    saves = []

    class InterruptedStream:
        """A file that receives the signal after the first kilobyte."""

        def __init__(self, stream):
            self.stream, self.written = stream, 0

        def write(self, data):
            if self.written > 1024:
                os.kill(os.getpid(), signum)
            self.written += self.stream.write(data)
            return len(data)

        def flush(self):
            self.stream.flush()

    def save(obj, stream, *args, **kwargs):
        saves.append(stream)
        target = InterruptedStream(stream) if len(saves) == 2 else stream
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    output_dir = tmp_path / "run"
    argv = ["--config-file", BASELINE, "--no-progress", "--no-eval", *TINY, "SOLVER.MAX_ITER", "6"]
    argv += ["SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", str(output_dir)]
    status, printed = run_main(argv)

    assert len(saves) == 2
    assert status == 128 + signum
    assert printed.splitlines()[-1] == "error: interrupted" and "Traceback" not in printed
    assert temporaries(output_dir) == []
    assert last_checkpoint(output_dir).name == "model_0000002.pt"
    assert not (output_dir / "model_0000004.pt").exists()
    assert multiprocessing.active_children() == []


def test_temporaries_of_a_killed_run_are_removed_by_the_next_run(data_root, tmp_path):
    """SIGKILL skips every clean-up: the checkpoint it was writing stays as ``.model_*.pt.*.tmp``.
    The next run of the folder, fresh or resumed, removes every ``.*.tmp``; --resume continues from
    the last complete checkpoint."""
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / ".model_0000010.pt.123.tmp").write_bytes(b"PK\x03\x04 half a checkpoint")
    argv = ["--config-file", BASELINE, "--no-progress", "--no-eval", *TINY, "SOLVER.CHECKPOINT_PERIOD", "2"]
    argv += ["OUTPUT_DIR", str(output_dir)]
    # A first run, "killed" after its checkpoint at 2: a shorter run that is then extended.
    status, printed = run_main(argv + ["SOLVER.MAX_ITER", "2"])
    assert status == 0, printed
    assert temporaries(output_dir) == []

    # The kill came while checkpoint 4 and the pointer were written.
    partial = (output_dir / "model_0000002.pt").read_bytes()[:4096]
    (output_dir / ".model_0000004.pt.a1b2c3.tmp").write_bytes(partial)
    (output_dir / ".last_checkpoint.d4e5f6.tmp").write_text("model_00")
    status, printed = run_main(argv + ["--resume", "SOLVER.MAX_ITER", "4"])
    assert status == 0, printed
    assert f"resuming from {output_dir / 'model_0000002.pt'} at iteration 2" in printed
    assert temporaries(output_dir) == []
    assert last_checkpoint(output_dir).name == "model_0000004.pt"
    assert torch.load(output_dir / "model_final.pt", weights_only=False)["iteration"] == 4
