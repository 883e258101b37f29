#!/usr/bin/env python3
"""bench/results.png from bench/results.json (both written by `make bench`; `make bench-chart` draws
the PNG again from the JSON). Needs matplotlib, pinned in the Makefile's venv; its own DejaVu fonts,
no system fonts.

    .venv/bin/python tools/chart.py [results.json [results.png]]

Top: per scenario, median req/s (each run a dot) and Envoy CPU µs per request, coloured by the Envoy
config that served it. Bottom: the report's ratios, req/s and Envoy CPU per request (inverted, so
that for both higher is better), with the numeric targets marked. Generic over the scenarios and
ratios in the JSON; a scenario that failed keeps its row, marked as such."""

import io
import json
import re
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from PIL import Image  # noqa: E402  (a matplotlib dependency)

ROOT = Path(__file__).resolve().parent.parent
# Colour-blind-safe (Okabe-Ito), one per Envoy config, in the order the configs first appear.
COLOURS = ["#999999", "#0072B2", "#56B4E9", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#F0E442"]
RPS_COLOUR, TARGET_COLOUR = "#0072B2", "#CC0000"
MAX_PNG_BYTES = 100_000


def label(s):
    """'(e) POST /user/…: token + …', at most two lines of 48 characters."""
    lines = textwrap.wrap(f"{s['key']} {s['what']}", 48, max_lines=2, placeholder=" …")
    return "\n".join(lines)


def thousands(v):
    return f"{v:,.0f}".replace(",", "\u2009")  # a thin space: 36 685


def target_value(target):
    """The number of a target like '≥ 0.90', or None for a target in words (or '—')."""
    m = re.search(r"[≥>]=?\s*([0-9]+(?:\.[0-9]+)?)", target)
    return float(m.group(1)) if m else None


def ratio_label(r):
    """'(e) ÷ (d)', then its target: beside it if a number, on a second line if in words."""
    head = f"{r['num']} ÷ {r['den']}"
    if r["target"] in ("", "—"):
        return head
    if re.fullmatch(r"\s*[≥>]=?\s*[0-9.]+\s*", r["target"]):
        return f"{head}   target {r['target']}"
    return head + "\n" + "\n".join(textwrap.wrap(r["target"], 48, max_lines=2, placeholder=" …"))


def scenarios_panel(ax_rps, ax_cpu, scenarios, colour_of):
    ys = range(len(scenarios))
    rps_max = max([s["rps"] or 0 for s in scenarios] + [r or 0 for s in scenarios for r in s["rps_runs"]] + [1])
    cpu_max = max([s["envoy_cpu_us_per_req"] or 0 for s in scenarios] + [1])
    for y, s in zip(ys, scenarios):
        colour = colour_of[s["envoy"]]
        if s["rps"] is None:
            why = (s.get("error") or "no runs")[:60]
            ax_rps.text(rps_max * 0.01, y, f"aborted: {why}", va="center", fontsize=8, color="#B00000")
            continue
        ax_rps.barh(y, s["rps"], color=colour, height=0.7)
        runs = [r for r in s["rps_runs"] if r is not None]
        ax_rps.plot(runs, [y] * len(runs), "o", ms=3.5, mfc="white", mec="black", mew=0.8)
        ax_rps.text(max([s["rps"]] + runs) + rps_max * 0.015, y, thousands(s["rps"]), va="center", fontsize=8.5)
        cpu = s["envoy_cpu_us_per_req"]
        if cpu is not None:
            ax_cpu.barh(y, cpu, color=colour, height=0.7)
            ax_cpu.text(cpu + cpu_max * 0.02, y, f"{cpu:.0f}", va="center", fontsize=8.5)
    ax_rps.set_yticks(list(ys), [label(s) for s in scenarios], fontsize=8.5)
    ax_rps.invert_yaxis()  # (a) on top, as in the report
    ax_rps.set_xlim(0, rps_max * 1.18)
    ax_cpu.set_xlim(0, cpu_max * 1.2)
    ax_rps.set_xlabel("throughput, requests per second (median; higher is better)")
    ax_cpu.set_xlabel("Envoy CPU time per request, µs\n(user + system, median; lower is better)")
    ax_rps.xaxis.set_major_formatter(lambda v, _: thousands(v))
    for ax in (ax_rps, ax_cpu):
        ax.grid(axis="x", color="#DDDDDD", lw=0.8)
        ax.set_axisbelow(True)
        ax.spines[["top", "right"]].set_visible(False)
    ax_cpu.tick_params(axis="y", left=False)


def ratios_panel(ax, ratios):
    ys = list(range(len(ratios)))
    top = max([r["rps"] or 0 for r in ratios] + [r["envoy_cpu_inverted"] or 0 for r in ratios]
              + [target_value(r["target"]) or 0 for r in ratios] + [1.0])
    xmax = top * 1.12
    for y, r in zip(ys, ratios):
        if r["rps"] is not None:
            ax.barh(y, r["rps"], color=RPS_COLOUR, height=0.6, alpha=0.85)
            ax.text(0.015 * xmax, y, f"{r['rps']:.2f}", va="center", fontsize=8.5, color="white",
                    fontweight="bold")
        else:
            ax.text(0.015 * xmax, y, "not measured", va="center", fontsize=8, color="#777777")
        if r["envoy_cpu_inverted"] is not None:
            ax.plot(r["envoy_cpu_inverted"], y, "D", ms=6, mfc="white", mec="black", mew=1.0)
        goal = target_value(r["target"])
        if goal is not None:
            ax.plot([goal, goal], [y - 0.42, y + 0.42], color=TARGET_COLOUR, lw=2.2)
    ax.axvline(1.0, color="black", lw=0.9, ls="--")
    ax.set_yticks(ys, [ratio_label(r) for r in ratios], fontsize=8.5)
    ax.invert_yaxis()
    ax.set_xlim(0, xmax)
    ax.set_xlabel("ratio of medians in the same run (1.0 = same as the baseline; higher is better)")
    ax.set_title("Ratios to the baseline", loc="left", fontsize=10, fontweight="bold", pad=24)
    ax.grid(axis="x", color="#DDDDDD", lw=0.8)
    ax.set_axisbelow(True)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(
        handles=[
            Patch(color=RPS_COLOUR, alpha=0.85, label="req/s"),
            Line2D([], [], marker="D", ls="", mfc="white", mec="black", label="Envoy CPU per request (inverted)"),
            Line2D([], [], color=TARGET_COLOUR, lw=2.2, label="target (not asserted)"),
            Line2D([], [], color="black", lw=0.9, ls="--", label="1.0: as the baseline"),
        ],
        loc="lower left", bbox_to_anchor=(-0.01, 1.0), ncol=4, fontsize=8, frameon=False,
    )


def main():
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "bench/results.json"
    out = Path(sys.argv[2]) if len(sys.argv) > 2 else ROOT / "bench/results.png"
    data = json.loads(src.read_text())
    scenarios, ratios = data["scenarios"], data["ratios"]
    configs = list(dict.fromkeys(s["envoy"] for s in scenarios))
    colour_of = {c: COLOURS[i % len(COLOURS)] for i, c in enumerate(configs)}

    # Sizes in inches: a row per scenario or ratio, and fixed room for the header (above the
    # plots), the gap between the two panels (x labels, the ratios' title and legend), the bottom.
    top_h, bottom_h = 0.48 * len(scenarios) + 0.3, 0.36 * max(len(ratios), 1) + 0.3
    header, gap, bottom = 1.75, 1.45, 0.62
    fig = plt.figure(figsize=(12, header + top_h + gap + bottom_h + bottom), dpi=100)
    # hspace is a fraction of the mean axes height.
    grid = fig.add_gridspec(2, 2, height_ratios=[top_h, bottom_h], width_ratios=[2.2, 1],
                            hspace=2 * gap / (top_h + bottom_h), wspace=0.06)
    ax_rps = fig.add_subplot(grid[0, 0])
    ax_cpu = fig.add_subplot(grid[0, 1], sharey=ax_rps)
    ax_ratio = fig.add_subplot(grid[1, :])
    scenarios_panel(ax_rps, ax_cpu, scenarios, colour_of)
    plt.setp(ax_cpu.get_yticklabels(), visible=False)
    ratios_panel(ax_ratio, ratios)

    inch = 1 / fig.get_figheight()  # figure fraction per inch, to place the header in inches
    fig.text(0.01, 1 - 0.12 * inch, "otp-filter in Envoy (--concurrency 2): throughput and CPU per request",
             va="top", fontsize=13, fontweight="bold")
    fig.text(0.01, 1 - 0.45 * inch,
             f"Medians of {data['runs']} run{'s' if data['runs'] != 1 else ''} of {data['measure_secs']:g} s each ({data['warmup_secs']:g} s warm-up), "
             f"{data['conns']} keep-alive HTTP/1.1 connections, closed loop; {data['date']}, commit {data['commit']}.\n"
             "Clients, Envoys and stubs share the machine's cores: compare ratios, not absolute numbers. "
             "Full figures: bench/results.md.",
             va="top", fontsize=8.5, color="#444444", linespacing=1.4)
    fig.legend(
        handles=[Patch(color=colour_of[c], label=f"Envoy {c}") for c in configs]
        + [Line2D([], [], marker="o", ls="", ms=4, mfc="white", mec="black", label="one run's req/s")],
        loc="upper left", bbox_to_anchor=(0.005, 1 - 0.9 * inch), ncol=3, fontsize=8.5,
        frameon=False, title="Bar colour: the Envoy config that served the scenario", title_fontsize=8.5,
        alignment="left",
    )
    fig.subplots_adjust(left=0.30, right=0.97, top=1 - header * inch, bottom=bottom * inch)

    # A 48-colour palette PNG: flat colours and antialiased text need no more, and it stays well
    # under 100 KB as scenarios are added (17 scenarios: about 80 KB).
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    image = Image.open(buf).convert("RGB").quantize(colors=48, method=Image.Quantize.MEDIANCUT)
    image.save(out, optimize=True)
    size = out.stat().st_size
    if size > MAX_PNG_BYTES:
        sys.exit(f"{out}: {size} bytes, over {MAX_PNG_BYTES}")
    print(f"wrote {out} ({size} bytes)")


if __name__ == "__main__":
    main()
