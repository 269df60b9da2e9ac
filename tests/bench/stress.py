"""make stress: a study killed (SIGKILL) at many random moments resumes to the very rows of an uninterrupted run.

The study: every demo-ladder checkpoint × RTN 3/4-bit and GPTQ 3-bit × one perplexity eval. Prints one
line per kill (when, how many jobs were stored) and whether the resumed results equal the reference row for row.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kill_resume import cli, comparable_rows, interrupted_run  # noqa: E402

STUDY = """name: stress
ladder: [tasks/ladders/demo/*/tpp*]
quant:
  - {method: rtn, bits: [3, 4]}
  - {method: gptq, bits: 3, group_size: 32}
calibration: {samples: 32, seq_len: 128}
evals: [{kind: perplexity, tokens: 16384, seq_len: 128}]
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--longest", type=float, default=2.5, help="longest wait after a run's first new job")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        study = root / "stress.yaml"
        study.write_text(STUDY)
        cli("run", str(study), "--store", str(root / "reference.sqlite"))
        kills = interrupted_run(study, root / "killed.sqlite", args.kills, args.seed, args.longest)
        reference = comparable_rows(study, root / "reference.sqlite")
        resumed = comparable_rows(study, root / "killed.sqlite")
    print("| kill | seconds after the run's first new job | jobs stored |\n|---|---|---|")
    for index, (delay, jobs) in enumerate(kills, 1):
        print(f"| {index} | {delay:.1f} | {jobs} |")
    same = reference == resumed
    rows = reference.count("\n") - 1
    print(f"\n{len(kills)} kills; resumed results {'identical to' if same else 'DIFFERENT from'} the uninterrupted run "
          f"({rows} rows)")  # fmt: skip
    return 0 if same and kills else 1


if __name__ == "__main__":
    sys.exit(main())
