"""Results table of the training pipeline: teacher vs LTC-19 vs LSTM-19, nominal and perturbed.

Reads the evaluation of finished runs (``RUN/evaluate/results.json``, written by
`liquid-control train`) and prints one markdown table over all tasks; with ``--out`` it also writes
it (and a CSV). Numbers are whatever the runs measured; nothing is computed here but ratios.

    python benchmarks/results_table.py runs/cartpole runs/rover runs/idp runs/half_cheetah \
        --out benchmarks/results.md
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path


def load_rows(run: Path) -> list[dict]:
    path = run / "evaluate" / "results.json"
    if not path.exists():
        raise SystemExit(f"{run}: no evaluation ({path} missing); run `liquid-control train` first")
    return json.loads(path.read_text())


def table(rows: list[dict]) -> str:
    cases = list(dict.fromkeys(r["case"] for r in rows))
    head = ["task", "agent", "params", *cases, "% of teacher (nominal)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    by = {(r["task"], r["agent"], r["case"]): r for r in rows}
    for task in dict.fromkeys(r["task"] for r in rows):
        teacher = by[(task, "teacher", "nominal")]["mean_return"]
        for agent in dict.fromkeys(r["agent"] for r in rows if r["task"] == task):
            first = by[(task, agent, "nominal")]
            cells = [
                f"{by[(task, agent, c)]['mean_return']:.1f}" if (task, agent, c) in by else "-"
                for c in cases
            ]
            pct = (
                f"{100 * first['mean_return'] / teacher:.0f}%"
                if agent != "teacher" and teacher > 0
                else ""
            )
            lines.append(
                f"| {task} | {agent} | {first['parameters']} | " + " | ".join(cells) + f" | {pct} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders of `liquid-control train`")
    parser.add_argument(
        "--out", type=Path, help="also write the table here (and a .csv next to it)"
    )
    args = parser.parse_args(argv)
    rows = [r for run in args.runs for r in load_rows(run)]
    text = table(rows)
    print(text)
    if args.out:
        args.out.write_text(text)
        with open(args.out.with_suffix(".csv"), "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
