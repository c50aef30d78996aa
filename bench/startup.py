"""Start-up time of the command line: what answers before a run needs the model (target: about a second).

Each command runs `--repeats` times in a fresh interpreter (wall time, median), against the import it avoids in the
same run: `import torch, lightning, transformers, torchmetrics`, what every command paid before the entry points
imported `sinkflow.run` lazily and the scoring path stopped importing torch. A ratio well under 1 means the command
answers without that import. Prints one JSON line.

    python bench/startup.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = "import torch, lightning, transformers, torchmetrics"
RECORD = {"benchmark": "pope", "id": "random/1", "category": "random", "question": "Is there a cat?"}


def commands(predictions: Path) -> dict[str, tuple[list[str], int]]:
    """The commands timed, by name, with the exit code each must give (a command that fails otherwise would time
    as fast): `--help` of each entry point, a mistyped override, the scoring CLI."""
    return {
        "train.py --help": ([str(ROOT / "train.py"), "--help"], 0),
        "evaluate.py --help": ([str(ROOT / "evaluate.py"), "--help"], 0),
        "analyze.py --help": ([str(ROOT / "analyze.py"), "--help"], 0),
        "train.py trainer.max_epocs=3 (mistyped)": ([str(ROOT / "train.py"), "trainer.max_epocs=3"], 1),
        "sinkflow.eval.score --help": (["-m", "sinkflow.eval.score", "--help"], 0),
        "sinkflow.eval.score <file>": (["-m", "sinkflow.eval.score", str(predictions)], 0),
    }


def seconds(args: list[str], repeats: int, cwd: Path, exit_code: int = 0) -> float:
    """Median wall time of `python ARGS` over `repeats` fresh interpreters, each checked to exit with `exit_code`."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
        times.append(time.perf_counter() - start)
        if proc.returncode != exit_code:
            raise RuntimeError(f"python {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        predictions = cwd / "predictions.jsonl"
        lines = [dict(RECORD, id=f"random/{i}", answer="yes", prediction="Yes", prompt="p") for i in range(32)]
        predictions.write_text("".join(json.dumps(line) + "\n" for line in lines))
        baseline = seconds(["-c", HEAVY], args.repeats, cwd)
        timed = {
            name: seconds(command, args.repeats, cwd, code) for name, (command, code) in commands(predictions).items()
        }
    print(
        json.dumps(
            {
                "baseline_heavy_import_s": round(baseline, 3),
                "seconds": {name: round(s, 3) for name, s in timed.items()},
                "ratio_to_heavy_import": {name: round(s / baseline, 3) for name, s in timed.items()},
            }
        )
    )


if __name__ == "__main__":
    main()
