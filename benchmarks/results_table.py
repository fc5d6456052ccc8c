"""Results table of the training pipeline: teacher vs LTC-19 vs LSTM-19, nominal and perturbed.

Reads the evaluation of finished runs (``RUN/evaluate/results.json``, written by
`liquid-control train`) and prints one markdown table over all tasks; with ``--out`` it also writes
it (and a CSV). Numbers are whatever the runs measured; nothing is computed here but ratios. The
last two columns are the smoothness of the actions in the nominal case (mean |delta a| as % of the
action range per step, and the share of the action energy above a quarter of the control rate);
"-" for runs evaluated before those were measured.

    python benchmarks/results_table.py runs/cartpole runs/rover runs/idp runs/half_cheetah \
        --out benchmarks/results.md
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from liquid_control.train.smoothness import table_cell


def load_rows(run: Path) -> list[dict]:
    path = run / "evaluate" / "results.json"
    if not path.exists():
        raise SystemExit(f"{run}: no evaluation ({path} missing); run `liquid-control train` first")
    return json.loads(path.read_text())


def table(rows: list[dict]) -> str:
    cases = list(dict.fromkeys(r["case"] for r in rows))
    smooth = ["\\|Δa\\| (nominal)", "hf energy (nominal)"]
    head = ["task", "agent", "params", *cases, "% of teacher (nominal)", *smooth]
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
            cells += [
                pct,
                table_cell(first.get("mean_abs_delta"), percent=True),
                table_cell(first.get("hf_energy")),
            ]
            lines.append(
                f"| {task} | {agent} | {first['parameters']} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines) + "\n"


def csv_columns(rows: list[dict]) -> list[str]:
    """The scalar keys of all rows in first-seen order (runs of different versions mix)."""
    keys = dict.fromkeys(k for r in rows for k, v in r.items() if not isinstance(v, (dict, list)))
    return list(keys)


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
            writer = csv.DictWriter(
                fh, fieldnames=csv_columns(rows), restval="-", extrasaction="ignore"
            )
            writer.writeheader()
            writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
