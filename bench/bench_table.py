"""The markdown table every bench runner prints at its end (rows as in bench/results.json)."""
import time


def print_table(rows, notes, out, started, first_col="figure"):
    """Prints `rows` (dicts with figure, measurement, lifeline, baseline, ratio, target,
    meets_target, note) as a markdown table, then `notes`, then how many rows in how long and
    where they were written (`out`); `started` is the run's time.time() at its start."""
    cols = [first_col, "measurement", "lifeline", "baseline", "ratio", "target", "met"]
    print()
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        ok = {True: "yes", False: "NO", None: "-"}[r["meets_target"]]
        print(f"| {r['figure']} | {r['measurement']} | {r['lifeline']} | {r['baseline']} | {r['ratio']} | {r['target']} | {ok} |")
        if r["note"]:
            print(f"|  | ↳ {r['note']} |  |  |  |  |  |")
    for n in notes:
        print(f"note: {n}")
    print(f"\n{len(rows)} rows in {time.time() - started:.0f} s; written to {out}")
