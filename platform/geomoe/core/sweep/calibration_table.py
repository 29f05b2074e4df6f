"""The calibration's table (core, no Ray): power, false alarms and null-world detections as rates with their Wilson
intervals, the Markdown table of every comparison, and a sweep's verdicts beside their calibration."""

from __future__ import annotations

import math
from typing import Any

from geomoe.core.stats import Difference


def wilson(successes: int, total: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson 95% interval of a proportion, in percent."""
    if total == 0:
        return 0.0, 100.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return 100 * max(0.0, centre - half), 100 * min(1.0, centre + half)


def summary(entries: list[dict[str, Any]], primary: str | None = None) -> dict[str, Any]:
    """Power (planted comparisons "reproduced"), false alarms (A/A comparisons not "inconclusive") and null-world
    detections (mechanism comparisons "reproduced" where the premise is false), each as a count with its Wilson
    interval: over every metric row, and over the sweep's own metric (``primary``) only, since one comparison's
    metrics are correlated and count as one there. An A/A comparison that several mechanisms share (the same
    configuration and seeds on the same world) counts once."""
    out: dict[str, Any] = {}
    rates = (
        ("planted", "power", "reproduced"),
        ("aa", "false_alarms", None),
        ("null", "null_detections", "reproduced"),
    )
    for kind, name, counted in rates:
        for scope, suffix in ((None, ""), (primary, "_primary")):
            chosen = [e for e in entries if e["kind"] == kind and e["verdict"] != "no paired values"]
            chosen = [e for e in chosen if scope is None or e["metric"] == scope]
            if kind == "aa":  # the same configuration on the same world is one comparison, however many use it
                chosen = list({(e["world_data"], e["comparison"], e["metric"]): e for e in chosen}.values())
            hits = sum(e["verdict"] == counted if counted else e["verdict"] != "inconclusive" for e in chosen)
            lo, hi = wilson(hits, len(chosen))
            out[name + suffix] = {
                "count": hits,
                "of": len(chosen),
                "percent": 100 * hits / len(chosen) if chosen else None,
            }
            out[name + suffix] |= {"interval": [round(lo, 1), round(hi, 1)]}
    return out


def _paper(e: dict[str, Any]) -> str:
    """The paper's change, or the direction it claims without a number (a mechanism no table row ablates)."""
    if e["paper_delta"] is not None:
        return f"{e['paper_delta']:+.2f}"
    return f"{'+' if e['claimed'] > 0 else '-'} (no number)"


def _ours(e: dict[str, Any]) -> str:
    """The difference; "†" marks an interval over queries only (one seed a side: training randomness not in it)."""
    if not e["ours"]:
        return "-"
    found = Difference(**e["ours"])
    return str(found) if found.with_seeds else f"{found} †"


def markdown(result: dict[str, Any]) -> str:
    """The calibration table (one row per comparison and metric) and its power and false-alarm lines."""
    head = ["mechanism", "world", "strength", "comparison", "metric", "paper Δ", "ours Δ [95% paired]", "verdict"]
    lines = ["| " + " | ".join([*head, "as expected"]) + " |", "|---|---|---|---|---|---|---|---|---|"]
    for e in result["entries"]:
        cells = [e["mechanism"], e["world"], f"{e['knob'].rsplit('.', 1)[-1]}={e['strength']:g}", e["comparison"]]
        cells += [e["metric"], _paper(e), _ours(e), e["verdict"]]
        cells.append(
            "yes" if e["as_expected"] else "**no**" + (f" (x{e['more_data']:g} data)" if e["more_data"] else "")
        )
        lines.append("| " + " | ".join(cells) + " |")
    s, primary = result["summary"], result.get("metric", "")
    lines.append("")
    for name, label in (
        ("power", "power (planted-world comparisons reproduced)"),
        ("false_alarms", "false alarms (A/A comparisons not inconclusive; 5% if the intervals mean what they say)"),
        ("null_detections", "null-world detections (reproduced where the premise is false)"),
    ):
        lines.append(_rate(f"{label}, every metric", s[name]))
        lines.append(_rate(f"{label}, {primary} only", s[f"{name}_primary"]))
    if any(e["ours"] and not e["ours"]["with_seeds"] for e in result["entries"]):
        lines.append("†: one seed a side, so the interval is over queries only and cannot count training randomness")
    if any(e["more_data"] for e in result["entries"]):
        lines.append("x n data: a planted effect of the size measured needs about n times the queries (or seeds) to be "
                     "seen 80% of the time")  # fmt: skip
    wall = f"wall time {result['wall_s']:.0f} s (this invocation: a resumed one counts its own part only)"
    lines.append(f"seeds {result['seeds']}, A/A seeds {result['aa_seeds']}; {wall}")
    return "\n".join(lines) + "\n"


def _found(entries: list[dict[str, Any]]) -> str:
    if not entries:
        return "-"
    e = entries[0]
    return f"{e['verdict']} {Difference(**e['ours']).delta:+.2f}" if e["ours"] else e["verdict"]


def beside_verdicts(verdict_entries: list[dict[str, Any]], result: dict[str, Any]) -> str:
    """A sweep's verdicts (``tables.verdicts``), each next to what the same rows gave on the row's planted world,
    its null world and the A/A repeat there: a verdict whose planted effect went unseen says little either way."""
    head = ["paper row", "metric", "paper Δ", "ours Δ", "verdict", "planted world", "null world", "A/A (null world)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in verdict_entries:
        same = [
            c
            for c in result["entries"]
            if (c["row"], c["against"], c["metric"]) == (v["row"], v["previous"], v["metric"])
        ]
        cells = [v["row"], v["metric"], f"{v['paper_delta']:+.2f}"]
        cells += [str(v["ours"]) if v["ours"] is not None else "-", v["verdict"]]
        if not same:
            cells += ["not calibrated"] * 3
        else:
            for world, mechanism in (("planted", True), ("null", True), ("null", False)):
                chosen = [c for c in same if c["world"] == world and (c["comparison"] == "mechanism") == mechanism]
                cells.append(_found(chosen))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rate(label: str, rate: dict[str, Any]) -> str:
    if not rate["of"]:
        return f"{label}: none"
    lo, hi = rate["interval"]
    return f"{label}: {rate['count']}/{rate['of']} = {rate['percent']:.1f}% [Wilson 95%: {lo:.1f}, {hi:.1f}]"
