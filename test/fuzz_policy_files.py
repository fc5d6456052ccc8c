"""Fuzz the policy loader by hand: N mutated copies of a real policy file, hashes recomputed.

    .venv/bin/python test/fuzz_policy_files.py                # 100000 cases (~5 min on 2 cores)
    .venv/bin/python test/fuzz_policy_files.py --cases 2000 --seed 7

Prints how many files loaded (and stepped finite), how many were refused with a PolicyFileError
(grouped by the first words of the problem), and every escape (any other exception, or a loaded
file that steps to a non-finite action); exit code 1 if anything escaped. The same mutations run a
few hundred times in `make test` (test_policy_file_fuzz.py).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from policy_factory import joint_spec, make_policy
from policy_fuzz import base_policy, mutated_file, outcome


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    counts: Counter[str] = Counter()
    escapes: list[str] = []
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        base_path = Path(tmp) / "base.lcp"
        make_policy(joint_spec(3, 2), seed=1).save(base_path)
        base = base_policy(base_path)
        path = Path(tmp) / "mutated.lcp"
        for k in range(args.cases):
            what = mutated_file(*base, random.Random(args.seed * 10**9 + k), path)
            result = outcome(path)
            if result.startswith("ESCAPED"):
                escapes.append(f"case {k} ({what}): {result}")
                counts["ESCAPED"] += 1
            elif result == "valid":
                counts["valid"] += 1
            else:
                counts["PolicyFileError"] += 1
                counts[result] += 1
    print(f"{args.cases} mutated policy files in {time.monotonic() - t0:.0f} s (seed {args.seed})")
    last_resort = sum(n for k, n in counts.items() if k.startswith("refused: invalid content"))
    for key in ("valid", "PolicyFileError", "ESCAPED"):
        print(f"  {key:<16} {counts.get(key, 0):>7}")
    print(f"  (of the refusals, {last_resort} reached only the loader's last-resort handler)")
    print("refusals by problem:")
    for key, n in counts.most_common():
        if key.startswith("refused: "):
            print(f"  {n:>7}  {key[9:]}")
    for line in escapes[:50]:
        print(line)
    return 1 if escapes else 0


if __name__ == "__main__":
    sys.exit(main())
