"""What a benchmark result records about the machine it was measured on."""

import os
import platform
from collections.abc import Sequence

import torch

#: /proc/cpuinfo flags of the vector and integer instruction sets that decide how fast the CPU runs
#: float32 and int8 kernels (onnxruntime's int8 convolutions gain most with VNNI), and their names.
CPU_FEATURES = {
    "avx2": "AVX2",
    "avx512f": "AVX-512",
    "avx512_vnni": "AVX-512 VNNI",
    "avx_vnni": "AVX-VNNI",
    "amx_int8": "AMX-INT8",
}


def cpu_model_and_features() -> tuple[str, list[str]]:
    """The CPU's model name and which of :data:`CPU_FEATURES` it has (none known off Linux)."""
    cpu, flags = platform.processor(), set()
    if os.path.isfile("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    cpu = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
                    break  # the first processor's entry is enough
    return cpu, [name for flag, name in CPU_FEATURES.items() if flag in flags]


def machine_info(threads: int, command: Sequence[str]) -> dict:
    """CPU and its instruction sets, core count, threads, library versions and the command line, for the JSON."""
    cpu, features = cpu_model_and_features()
    info = {
        "cpu": cpu,
        "cpu_features": features,
        "cores": os.cpu_count(),
        "threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "command": list(command),
    }
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info
