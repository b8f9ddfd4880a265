"""Result tables in the earlier port's README format (per-fold LFW accuracy in percent, 3 decimals)."""
from __future__ import annotations

from typing import Sequence


def fold_table(rows: Sequence[tuple[str, dict]]) -> str:
    """Markdown table: one row per setting, `Avg.` then folds 1..n, accuracies as percentages."""
    n_folds = max(len(result["fold_accuracies"]) for _, result in rows)
    width = max([18] + [len(name) for name, _ in rows])
    header = f"| {'':<{width}} |   Avg. | " + " | ".join(f"{i:^6}" for i in range(1, n_folds + 1)) + " |"
    rule = f"| {'-' * width} | ------ | " + " | ".join("------" for _ in range(n_folds)) + " |"
    lines = [header, rule]
    for name, result in rows:
        folds = " | ".join(f"{100 * a:6.3f}" for a in result["fold_accuracies"])
        lines.append(f"| {name:<{width}} | {100 * result['accuracy_mean']:6.3f} | {folds} |")
    return "\n".join(lines)


def center_distance_table(rows: Sequence[tuple[str, float]]) -> str:
    """The earlier port's second table: mean over classes of the distance to the nearest other center."""
    width = max([18] + [len(name) for name, _ in rows])
    lines = [f"| {'':<{width}} |   Min Avg. |", f"| {'-' * width} | ---------  |"]
    lines += [f"| {name:<{width}} | {value:^10.4f} |" for name, value in rows]
    return "\n".join(lines)
