"""Benchmark results as JSON (for machines), Markdown (for the README) and an SVG chart.

The chart is written by hand: one row per scenario on a log axis, the baseline at 1x, the
measured ratio as a bar from it (green when it meets the target, red when not) and the target as
a tick, so a regression is visible at a glance without a plotting library.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.run import Scenario


def _num(value: float, unit: str = "") -> str:
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    if math.isinf(value):
        return "none"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def table(scenarios: Sequence[Scenario]) -> str:
    """The results table, in the order the scenarios ran."""
    lines = [
        "| scenario | measured | baseline | ratio | target | result |",
        "|---|---|---|---|---|---|",
    ]
    for s in scenarios:
        target = "none" if math.isinf(s.bound) else f"{s.op} {s.bound:g}x"
        result = "n/a" if math.isinf(s.bound) else ("pass" if s.passed else "**miss**")
        note = f" ({s.note})" if s.note else ""
        lines.append(
            f"| {s.name}{note} | {_cell(s.measured)}: {_num(s.value, s.unit)} | "
            f"{_cell(s.baseline_name)}: {_num(s.baseline, s.unit)} | {s.ratio:.2f}x | {target} | "
            f"{result} |"
        )
    return "\n".join(lines)


def _capacity(info: dict[str, Any]) -> str:
    levels = info.get("capacity") or {}
    if not levels:
        return ""
    lines = [
        "| concurrency | uploads/s | p50 | p95 | server CPU / upload | generator CPU / upload |",
        "|---|---|---|---|---|---|",
    ]
    for c, r in sorted(levels.items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {c} | {r['rps']:.0f} | {r['p50_ms']:.1f} ms | {r['p95_ms']:.1f} ms | "
            f"{r['server_cpu_ms_per_request']:.2f} ms | "
            f"{r['generator_cpu_ms_per_request']:.2f} ms |"
        )
    return "\n".join(lines)


def _cold(info: dict[str, Any]) -> str:
    cold = info.get("cold_deploys") or {}
    if not cold:
        return ""
    lines = [
        "| site | cold deploy | files/s | MB/s | client CPU per file | peak RSS |",
        "|---|---|---|---|---|---|",
    ]
    for n, r in sorted(cold.items(), key=lambda kv: int(kv[0])):
        lines.append(
            f"| {int(n):,} files | {r['seconds']:.1f} s | {r['files_per_s']:.0f} | "
            f"{r['mb_per_s']:.1f} | {r['client_cpu_ms_per_file']:.2f} ms | "
            f"{r['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join(lines)


def markdown(mode: str, scenarios: Sequence[Scenario], info: dict[str, Any]) -> str:
    env = info.get("environment", {})
    load = ", ".join(f"{x:.2f}" for x in env.get("load_average_at_start", []))
    parts = [
        f"# mosaicsync benchmark ({mode})",
        "",
        f"{env.get('date', '')}, Python {env.get('python', '')}, {env.get('cpus', '?')} CPUs, "
        f"load average at start {load}; "
        f"{info.get('sizes', {}).get('runs', '?')} runs per scenario (median), each interleaved "
        f"with its baseline; took {info.get('elapsed_s', 0):.0f} s.",
        "",
        table(scenarios),
        "",
    ]
    extras = []
    for s in scenarios:
        keep = {k: v for k, v in s.extra.items() if isinstance(v, int | float)}
        if keep:
            shown = (
                f"{k} = {_num(v, 's' if k.endswith('_s') and not k.endswith('per_s') else '')}"
                for k, v in keep.items()
            )
            extras.append(f"- {s.name}: " + ", ".join(shown))
    if extras:
        parts += ["## Details", "", *extras, ""]
    if capacity := _capacity(info):
        parts += ["## Platform capacity (small-file uploads, keep-alive)", "", capacity, ""]
    if cold := _cold(info):
        parts += ["## Cold deploys of the mixed sites", "", cold, ""]
    if "client_cpu_ms_per_file" in info:
        parts += [
            f"Client CPU per uploaded small file (user+sys of the deploy process / files): "
            f"{info['client_cpu_ms_per_file']:.2f} ms.",
            "",
        ]
    migrations = info.get("migrations")
    if migrations is not None:
        parts += ["## Migrations", "", f"```\n{json.dumps(migrations, indent=2)}\n```", ""]
    parts += [
        "## Watch: save to served",
        "",
        f"```\n{json.dumps(info.get('watch'), indent=2)}\n```",
        "",
    ]
    return "\n".join(parts)


# -- profiles --------------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _short(path: str) -> str:
    for marker in ("site-packages/", "/work/main/", "lib/python3.11/"):
        if marker in path:
            return path.split(marker, 1)[1]
    return path


def _frame(raw: str) -> tuple[str, str]:
    match = _FRAME.match(raw)
    if not match:
        return raw, raw
    file = _short(match["file"])
    return f"{match['func']} ({file})", file


def summarize_profile(raw: str, top: int = 15) -> str:
    """Where the samples are: by function (self and inclusive) and by package (self)."""
    self_fn: Counter[str] = Counter()
    incl_fn: Counter[str] = Counter()
    self_pkg: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [
            _frame(f) for f in stack.split(";") if f and not f.startswith(("process ", "thread "))
        ]
        if not frames:
            continue
        name, file = frames[-1]
        self_fn[name] += n
        self_pkg[file.split("/", 1)[0] if "/" in file else file] += n
        for seen in {f[0] for f in frames}:
            incl_fn[seen] += n
    if not total:
        return "(no samples)"

    def rows(counter: Counter[str], limit: int) -> list[str]:
        return [f"| {n / total * 100:.1f}% | `{_cell(k)}` |" for k, n in counter.most_common(limit)]

    return "\n".join(
        [
            f"{total} samples.",
            "",
            "| self | function |",
            "|---|---|",
            *rows(self_fn, top),
            "",
            "| self | package or module |",
            "|---|---|",
            *rows(self_pkg, 10),
            "",
            "| inclusive | function |",
            "|---|---|",
            *rows(incl_fn, top + 10),
        ]
    )


def profiles_markdown(mode: str, profiles: dict[str, str]) -> str:
    parts = [f"# Hot paths ({mode} run, py-spy)", ""]
    for name, raw in profiles.items():
        parts += [f"## {name}", "", summarize_profile(raw), ""]
    return "\n".join(parts)


# -- chart -----------------------------------------------------------------------------------------


def svg(scenarios: Sequence[Scenario], title: str) -> str:
    """Each scenario's ratio to its baseline on a log axis, with its target as a tick.

    The label says which way is better: "≥" for speedups, "≤" for costs.
    """
    rows = [s for s in scenarios if s.ratio > 0 and math.isfinite(s.ratio)]
    left, right, top, row_h = 340, 40, 50, 30
    width = 900
    plot = width - left - right
    height = top + row_h * len(rows) + 40
    lo, hi = 0.1, 100.0

    def x(value: float) -> float:
        value = min(max(value, lo), hi)
        return (
            left + (math.log10(value) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * plot
        )

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{width / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>',
    ]
    for tick in (0.1, 1, 10, 100):
        tx = x(tick)
        out.append(
            f'<line x1="{tx:.1f}" y1="{top - 10}" x2="{tx:.1f}" y2="{height - 30}" '
            f'stroke="{"#444" if tick == 1 else "#ddd"}"/>'
        )
        out.append(f'<text x="{tx:.1f}" y="{height - 14}" text-anchor="middle">{tick:g}x</text>')
    out.append(f'<text x="{x(1) + 4:.1f}" y="{top - 14}" fill="#444">baseline = 1x</text>')
    for i, s in enumerate(rows):
        y = top + i * row_h
        if math.isfinite(s.bound):
            color = "#2e8b57" if s.passed else "#c0392b"
            label = f"{s.name} ({'≤' if s.op == '<=' else '≥'} {s.bound:g}x)"
        else:
            color, label = "#999999", f"{s.name} (no target)"
        x0, x1 = sorted((x(1.0), x(s.ratio)))
        out.append(f'<text x="{left - 8}" y="{y + 17}" text-anchor="end">{escape(label)}</text>')
        out.append(
            f'<rect x="{x0:.1f}" y="{y + 6}" width="{max(x1 - x0, 1):.1f}" height="16" '
            f'fill="{color}" opacity="0.85"/>'
        )
        if math.isfinite(s.bound):
            tx = x(s.bound)
            out.append(
                f'<line x1="{tx:.1f}" y1="{y + 2}" x2="{tx:.1f}" y2="{y + 26}" stroke="black" '
                'stroke-width="2"/>'
            )
        label_x = x(s.ratio) + (6 if s.ratio >= 1 else -6)
        anchor = "start" if s.ratio >= 1 else "end"
        out.append(
            f'<text x="{label_x:.1f}" y="{y + 18}" text-anchor="{anchor}">{s.ratio:.2f}x</text>'
        )
    out.append("</svg>")
    return "\n".join(out)


def write(
    out_dir: Path,
    mode: str,
    scenarios: Sequence[Scenario],
    info: dict[str, Any],
    profiles: dict[str, str],
) -> list[Path]:
    """Write `<mode>.json`, `<mode>.md`, `<mode>.svg` (and `profile-<mode>.md`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "mode": mode,
        "scenarios": [
            {**asdict(s), "passed": s.passed, "bound": s.bound if math.isfinite(s.bound) else None}
            for s in scenarios
        ],
        "info": info,
    }
    paths = [out_dir / f"{mode}.json", out_dir / f"{mode}.md", out_dir / f"{mode}.svg"]
    paths[0].write_text(json.dumps(data, indent=2, default=str) + "\n")
    paths[1].write_text(markdown(mode, scenarios, info))
    paths[2].write_text(svg(scenarios, f"mosaicsync benchmark ({mode}): ratio to baseline") + "\n")
    if profiles:
        path = out_dir / f"profile-{mode}.md"
        path.write_text(profiles_markdown(mode, profiles))
        paths.append(path)
    return paths


README_START = "<!-- bench:full:start (generated from bench/results/full.json) -->"
README_END = "<!-- bench:full:end -->"


def load(path: Path) -> tuple[str, list[Scenario], dict[str, Any]]:
    """(mode, scenarios, info) of a results JSON written by `write`."""
    from bench.run import Scenario

    data = json.loads(path.read_text())
    scenarios = []
    for row in data["scenarios"]:
        fields = {k: v for k, v in row.items() if k != "passed"}
        fields["bound"] = math.inf if fields["bound"] is None else fields["bound"]
        scenarios.append(Scenario(**fields))
    return data["mode"], scenarios, data["info"]


def readme_with_table(readme: str, scenarios: Sequence[Scenario]) -> str:
    """The README with the table between its bench markers replaced by these results."""
    start, end = readme.index(README_START), readme.index(README_END)
    return readme[: start + len(README_START)] + "\n" + table(scenarios) + "\n" + readme[end:]


def update_readme(readme: Path, scenarios: Sequence[Scenario]) -> None:
    readme.write_text(readme_with_table(readme.read_text(), scenarios))


def summary(scenarios: Sequence[Scenario]) -> str:
    """One line per scenario: ratio, target, pass or miss (and by how much)."""
    lines = []
    for s in scenarios:
        if math.isinf(s.bound):
            verdict = "no target"
        elif s.passed:
            verdict = f"pass ({s.op} {s.bound:g}x)"
        else:
            verdict = f"MISS ({s.op} {s.bound:g}x; off by {abs(s.ratio / s.bound - 1) * 100:.0f} %)"
        lines.append(f"{s.ratio:8.2f}x  {verdict:<34} {s.name}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    """Render a results JSON again (after a change to the report, without a new run)."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("results", type=Path, help="a <mode>.json written by bench.run")
    parser.add_argument(
        "--readme", type=Path, help="also regenerate the table of this README (a full run)"
    )
    args = parser.parse_args(argv)
    mode, scenarios, info = load(args.results)
    data = {"info": info}
    if args.readme:
        update_readme(args.readme, scenarios)
    out = args.results.parent
    (out / f"{mode}.md").write_text(markdown(mode, scenarios, data["info"]))
    title = f"mosaicsync benchmark ({mode}): ratio to baseline"
    (out / f"{mode}.svg").write_text(svg(scenarios, title) + "\n")


if __name__ == "__main__":
    main()
