"""The report: results.json -> report.md, a self-contained report.html and figures/*.png."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt

from simagents.io import atomic_write_text

ROUTES = {
    "imitation": "route 1, imitation: samples the next action with the return unknown",
    "dt": "route 2, Decision Transformer: prompted with the data's best return",
    "edt": "route 5, evidential planner: scores every action by the predicted return",
    "cdt": "route 5, causal planner: the same, with its action as an intervention",
}


def control_figure(name: str, result: dict[str, Any], path: Path) -> None:
    """Bar chart: behaviour policies in the data (grey) beside the agents built from the simulator."""
    behaviour = result["data"]["behaviour_returns"]
    agents = result["agents"]
    labels = [*behaviour, *agents]
    means = [*behaviour.values(), *(a["mean_return"] for a in agents.values())]
    errors = [0.0] * len(behaviour) + [a["std_return"] for a in agents.values()]
    colours = ["#bbbbbb"] * len(behaviour) + ["#3b6ea8"] * len(agents)
    fig, ax = plt.subplots(figsize=(7, 3.2), dpi=110)
    ax.bar(labels, means, yerr=errors, color=colours, capsize=3)
    ax.set_ylabel("episode return")
    ax.set_title(f"{result['testbed']}: behaviour policies (grey) and agents from one simulator (blue)")
    ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".tmp.png"))
    plt.close(fig)
    path.with_suffix(".tmp.png").replace(path)


def control_section(name: str, result: dict[str, Any]) -> tuple[list[str], str]:
    data = result["data"]
    heldout = result["simulator"].get("heldout", {})
    lines = [
        f"## {result['testbed']}",
        "",
        f"Data: {data['episodes']} episodes ({data['steps']} steps) from behaviour policies of mixed skill, "
        f"mean return {data['mean_return']:.1f}.",
    ]
    if heldout:
        lines.append(
            f"Simulator on held-out episodes: action NLL {heldout['eval/action_nll']:.3f} "
            f"(marginal action frequency: {heldout.get('eval/marginal_action_nll', float('nan')):.3f}), "
            f"value MAE {heldout['eval/value_mae']:.1f}."
        )
    lines += [
        "",
        "| agent | route | mean return ± std | normalised score |",
        "|---|---|---|---|",
    ]
    for agent, summary in result["agents"].items():
        lines.append(
            f"| {agent} | {ROUTES.get(agent, '')} | {summary['mean_return']:.1f} ± {summary['std_return']:.1f} "
            f"| {summary['normalised_score']:.0f} |"
        )
    lines += [
        "",
        "Normalised score: 0 is the random policy in the data, 100 the best behaviour policy (D4RL style).",
        "",
        interpretation(result),
        "",
    ]
    figure = f"figures/{name}_returns.png"
    lines.insert(4, f"\n![{name} returns]({figure})\n")
    return lines, figure


def interpretation(result: dict[str, Any]) -> str:
    """One paragraph that reads the measured numbers in the seed texts' terms; no claim they don't show."""
    agents = result["agents"]
    data_mean = result["data"]["mean_return"]
    best = max(result["data"]["behaviour_returns"].values())
    parts = []
    if "imitation" in agents:
        got = agents["imitation"]["mean_return"]
        near = abs(got - data_mean) <= 0.25 * max(abs(data_mean), 1.0)
        parts.append(
            f"The imitator scored {got:.1f} against the data's mean of {data_mean:.1f}: "
            + (
                "it simulates the population it was trained on, weak players included (seed 003)."
                if near
                else "not the population's mean, so at this budget it is not yet a faithful simulator of it."
            )
        )
    for name, label in (
        ("dt", "Return conditioning (route 2)"),
        ("edt", "Planning over predicted returns (route 5)"),
    ):
        if name in agents:
            got = agents[name]["mean_return"]
            verdict = "plays like the best of them" if got >= 0.9 * best else "stays below the best of them"
            parts.append(
                f"{label} scored {got:.1f} against the best behaviour policy's {best:.1f}: it {verdict}."
            )
    return " ".join(parts)


def write_report(folder: Path, results: dict[str, Any]) -> None:
    md = [
        "# simagents study",
        "",
        f"Profile `{results['profile']}`, seeds {results['seeds']}.",
        "",
        "One trajectory simulator per testbed, turned into different agents by different decision "
        "procedures. Each section shows what kind of agent came out.",
        "",
    ]
    figures = []
    for name, result in results["testbeds"].items():
        if result.get("kind") == "control":
            lines, figure = control_section(name, result)
            control_figure(name, result, folder / figure)
            md += lines
            figures.append(figure)
    text = "\n".join(md) + "\n"
    atomic_write_text(folder / "report.md", text)
    atomic_write_text(folder / "report.html", markdown_to_html(text, folder))


def markdown_to_html(text: str, folder: Path) -> str:
    """Enough Markdown for our reports (headings, tables, images, paragraphs), images embedded."""
    body: list[str] = []
    table: list[list[str]] = []

    def flush_table() -> None:
        if not table:
            return
        head, *rows = table
        body.append(
            "<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead>"
        )
        body.append(
            "<tbody>"
            + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
            + "</tbody></table>"
        )
        table.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if not all(set(c) <= {"-", ":"} for c in cells):
                table.append(cells)
            continue
        flush_table()
        if stripped.startswith("#"):
            level = len(stripped) - len(stripped.lstrip("#"))
            body.append(f"<h{level}>{html.escape(stripped[level:].strip())}</h{level}>")
        elif stripped.startswith("![") and "](" in stripped:
            alt = stripped[2 : stripped.index("]")]
            src = stripped[stripped.index("](") + 2 : -1]
            data = base64.b64encode((folder / src).read_bytes()).decode()
            body.append(f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">')
        elif stripped:
            body.append(f"<p>{html.escape(stripped).replace('`', '')}</p>")
    flush_table()
    style = (
        "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
        "table{border-collapse:collapse;margin:1rem 0}td,th{border:1px solid #ccc;padding:.3rem .6rem}"
        "th{background:#f3f3f3}img{max-width:100%}"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>simagents study</title>'
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )


__all__ = ["write_report"]
