"""Write the README's measured-results blocks from the benchmarks' JSON files.

    python benchmarks/readme_results.py           # rewrite the blocks in README.md
    python benchmarks/readme_results.py --check   # exit status 1 if README.md differs from the JSON

Each block sits between ``<!-- BEGIN results: NAME -->`` and ``<!-- END results: NAME -->`` and
is generated from ``benchmarks/results/NAME.json`` (written by ``benchmarks/accuracy.py --json`` or
``benchmarks/fps.py --json``): the machine and the command that measured it, then the table the
benchmark printed. No number in a block is typed by hand.
"""

import argparse
import json
import re
import sys
from pathlib import Path

from sltnet.atomic_io import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
RESULTS = ROOT / "benchmarks" / "results"
BLOCK = re.compile(r"(<!-- BEGIN results: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- END results: (?P=name) -->)", re.S)


def machine_line(machine: dict) -> str:
    """One sentence naming the machine, its libraries and the command."""
    device = f"{machine['gpu']} GPU, " if machine.get("gpu") else ""
    libraries = f"torch {machine['torch']}" + (
        f", onnxruntime {machine['onnxruntime']}" if machine.get("onnxruntime") else ""
    )
    command = " ".join(machine["command"])
    features = "".join(f", {feature}" for feature in machine.get("cpu_features", []))
    return (
        f"Measured on {device}{machine['cpu']} ({machine['cores']} cores{features}, {machine['threads']} threads), "
        f"{libraries}, "
        f"with `python {command}`."
    )


def render_block(report: dict) -> str:
    """The block's body for one results JSON."""
    return f"{machine_line(report['machine'])}\n\n{report['markdown'].rstrip()}\n"


def render_readme(text: str, results_dir: Path = RESULTS) -> str:
    """``text`` with every results block regenerated from ``results_dir/<name>.json``.

    Raises:
        SystemExit: a block names a results file that does not exist.
    """

    def replace(match: "re.Match[str]") -> str:
        path = results_dir / f"{match['name']}.json"
        if not path.is_file():
            sys.exit(f"error: {path}: not found (README block {match['name']!r})")
        report = json.loads(path.read_text(encoding="utf-8"))
        return f"{match.group(1)}{render_block(report)}{match.group(4)}"

    return BLOCK.sub(replace, text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    rendered = render_readme(text)
    if args.check:
        if rendered != text:
            print(f"error: {README}: results blocks differ from benchmarks/results (run {Path(__file__).name})")
            return 1
        return 0
    if rendered != text:
        atomic_write_text(README, rendered)
        print(f"updated {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
