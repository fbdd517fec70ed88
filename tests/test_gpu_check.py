"""``benchmarks/gpu_check.py`` where no GPU is: one line and exit status 2; its file names and its
results page. (On a CUDA machine the script itself is the check.)"""

import os
import subprocess
import sys
from pathlib import Path

from benchmarks import gpu_check

ROOT = Path(__file__).resolve().parent.parent


def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(ROOT))  # no GPU, also on a machine with one
    done = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--out-dir", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("error: gpu_check.py: torch ") and line.endswith(
        "sees no CUDA device here: run it on a machine with an NVIDIA GPU"
    )
    assert list(tmp_path.iterdir()) == []


def test_results_are_named_after_the_gpu():
    assert gpu_check.gpu_slug("NVIDIA H200") == "nvidia_h200"
    assert gpu_check.gpu_slug("NVIDIA GeForce RTX 4090 (Laptop)") == "nvidia_geforce_rtx_4090_laptop"


def test_the_cuda_tests_include_the_torch_cuda_and_tensorrt_tests():
    files = gpu_check.cuda_test_files()
    assert {"tests/test_runtime.py", "tests/test_export_tensorrt.py", "tests/test_tensorrt_api.py"} <= set(files)


def test_results_page_lists_versions_steps_and_rows():
    row = {
        "export": "small",
        "precision": "fp16",
        "description": "torch (cuda)",
        "fps": 123.45,
        "per_frame_ms": 8.1,
        "latency_ms": {"p50": 8.0, "p99": 9.5},
        "stages_ms": {"frame_engine": 3.25, "temporal_engine": 4.5},
        "peak_cuda_mib": 512.0,
    }
    result = {
        "versions": {"gpu": "NVIDIA H200", "torch": "2.11.0+cu130", "tensorrt": None},
        "command": ["benchmarks/gpu_check.py"],
        "seconds": 301.2,
        "tests": "4 passed, 30 deselected in 40.0s",
        "steps": [gpu_check.Step("export small int8", "failed", 12.0, "error: --calib-dataset x: unknown")._asdict()],
        "rows": [row],
    }
    page = gpu_check.markdown(result).splitlines()
    assert page[0] == "# GPU check: NVIDIA H200"
    assert "| torch | 2.11.0+cu130 |" in page and "| tensorrt | None |" in page
    assert "CUDA tests: 4 passed, 30 deselected in 40.0s" in page
    assert "| export small int8 | failed | 12 | error: --calib-dataset x: unknown |" in page
    assert page[-1] == "| small | fp16 | torch (cuda) | 123.5 | 8.10 | 8.00 | 9.50 | 3.25 | 4.50 | 512 |"
