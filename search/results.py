"""What a search writes: ``search.json`` (its state, rewritten after every candidate, so an
interrupted search keeps what it finished and ``--resume`` continues), ``search.md`` and
``frontier.svg`` (latency against fidelity, one dot per candidate).

The plot is plain SVG written here: one scatter needs no plotting library.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

from fxopt.store.atomic import write_atomic
from fxopt.testing.toml_text import toml_value

from .evaluate import PASSED, Outcome

STATE = "search.json"


@dataclass
class SearchState:
    """A search's record: what it searched and what each candidate gave."""

    recipe: str
    model: str
    #: the recipe and model it was started with: a resume with others is refused
    fingerprint: str
    objective: str
    space: dict[str, list[Any]]
    total: int
    outcomes: list[Outcome] = field(default_factory=list)
    frontier: list[str] = field(default_factory=list)
    winner: str | None = None
    closest: str | None = None
    seconds: float = 0.0
    finished: bool = False
    #: the ``[search] latency_tie`` the winner was chosen with
    latency_tie: float = 0.0
    #: the final round, when it ran: the finalists it timed side by side, the rounds, the shape
    final: dict[str, Any] | None = None

    @property
    def alone_seconds(self) -> float:
        return sum(o.alone_seconds for o in self.outcomes)

    def to_json(self) -> dict[str, Any]:
        data = {k: v for k, v in self.__dict__.items() if k != "outcomes"}
        data["alone_seconds"] = round(self.alone_seconds, 3)
        data["candidates"] = [o.to_json() for o in self.outcomes]
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SearchState:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["outcomes"] = [Outcome.from_json(c) for c in data.get("candidates", [])]
        return cls(**fields)

    def save(self, directory: Path) -> None:
        write_atomic(directory / STATE, json.dumps(self.to_json(), indent=2) + "\n")


def load_state(directory: Path) -> SearchState | None:
    path = directory / STATE
    if not path.is_file():
        return None
    return SearchState.from_json(json.loads(path.read_text(encoding="utf-8")))


def write_summary(state: SearchState, directory: Path, min_cosine: float | None) -> None:
    write_atomic(directory / "search.md", markdown(state))
    write_atomic(directory / "frontier.svg", svg(state, min_cosine))


def markdown(state: SearchState) -> str:
    by_id = {o.id: o for o in state.outcomes}
    lines = [
        f"# fxopt search: {len(state.outcomes)} of {state.total} candidates",
        "",
        f"- recipe: `{state.recipe}`, model: `{state.model}`, objective: {state.objective}",
    ]
    if state.winner:
        lines.append(f"- winner: **{state.winner}** ({values_text(by_id[state.winner])})")
        if state.objective == "latency" and state.latency_tie:
            lines.append(
                f"  - the best cosine among the qualifying candidates within "
                f"{state.latency_tie:.0%} of the fastest latency (`latency_tie`)"
            )
    if state.final:
        lines.append(
            f"- final round: {', '.join(state.final['finalists'])} timed side by side with the "
            f"original model ({state.final['rounds']} interleaved rounds, "
            f"{state.final['shape']}); the winner is ranked on these times (`final ms`)"
        )
    elif state.finished:
        closest = f"; closest: {state.closest}" if state.closest else ""
        lines.append(f"- no candidate met the budget{closest}")
    lines.append(f"- {cache_share(state)}")
    lines += ["", "![frontier](frontier.svg)", "", *table(state.outcomes, state.frontier)]
    return "\n".join(lines) + "\n"


def cache_share(state: SearchState) -> str:
    alone = state.alone_seconds
    # nothing shared: the search's own bookkeeping makes it a hair slower, not "-0%" faster
    share = max(0.0, 1 - state.seconds / alone) if alone > 0 else 0.0
    return (
        f"search {state.seconds:.0f} s; the same candidates run one by one: {alone:.0f} s "
        f"(their passes at the time they took when computed); the pass cache and dropped "
        f"prefixes saved {share:.0%}"
    )


def table(outcomes: list[Outcome], front: list[str]) -> list[str]:
    lines = [
        "| candidate | values | status | latency ms | vs eager | final ms | cosine mean "
        "| cosine min | size MB | seconds | cached passes | frontier |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        status = o.status if not o.misses else f"{o.status}: {'; '.join(o.misses)}"
        if o.message and o.status != PASSED:
            status += f" ({o.message.splitlines()[0]})"
        lines.append(
            f"| {o.id} | {values_text(o)} | {status} | {number(o.latency_ms, 2)} | "
            f"{number(o.speedup, 2, '×')} | {_final(o)} | {number(o.cosine_mean, 4)} | "
            f"{number(o.cosine_min, 4)} | "
            f"{_size(o)} | {o.seconds:.0f} | {o.cached_passes} | "
            f"{'yes' if o.id in front else ''} |"
        )
    return lines


def values_text(o: Outcome) -> str:
    return ", ".join(
        f"{k.rsplit('.', 1)[-1]}={toml_value(v) if isinstance(v, dict) else v}"
        for k, v in o.values.items()
    )


def number(value: float | None, digits: int, unit: str = "") -> str:
    return "–" if value is None else f"{value:.{digits}f}{unit}"


def _final(o: Outcome) -> str:
    """The final round's median, and its ratio to the original model timed beside it."""
    if o.final_ms is None:
        return "–"
    speed = f" ({o.final_speedup:.2f}× eager)" if o.final_speedup else ""
    return f"{o.final_ms:.2f}{speed}"


def _size(o: Outcome) -> str:
    if o.size_bytes is None:
        return "–"
    return f"{o.size_bytes / 1e6:.1f}" + (" (weights)" if o.size_from == "weights" else "")


def svg(state: SearchState, min_cosine: float | None) -> str:
    """Latency (x) against mean cosine (y): the frontier filled, the winner ringed, the
    budget's cosine a dashed line."""
    points = [o for o in state.outcomes if o.latency_ms is not None and o.cosine_mean is not None]
    width, height, pad = 640, 400, 60
    head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
    parts = [head, '<rect width="100%" height="100%" fill="white"/>']
    if not points:
        parts.append(f'<text x="{pad}" y="{height / 2}">no candidate was timed</text></svg>')
        return "\n".join(parts) + "\n"
    xs = [o.latency_ms for o in points]
    ys = [o.cosine_mean for o in points] + ([min_cosine] if min_cosine is not None else [])
    x0, x1 = _span(min(xs), max(xs))  # type: ignore[type-var]
    y0, y1 = _span(min(ys), max(ys))  # type: ignore[type-var]

    def at(x: float, y: float) -> tuple[float, float]:
        return (
            pad + (x - x0) / (x1 - x0) * (width - 2 * pad),
            height - pad - (y - y0) / (y1 - y0) * (height - 2 * pad),
        )

    parts += _axes(width, height, pad, (x0, x1), (y0, y1))
    if min_cosine is not None:
        _, y = at(x0, min_cosine)
        parts.append(
            f'<line x1="{pad}" x2="{width - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#c33" '
            'stroke-dasharray="4 3"/>'
        )
    for o in points:
        x, y = at(o.latency_ms, o.cosine_mean)  # type: ignore[arg-type]
        fill = "#2a6" if o.id in state.frontier else ("#bbb" if o.status != PASSED else "#69c")
        parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{fill}"/>')
        if o.id == state.winner:
            parts.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="9" fill="none" stroke="#000" '
                'stroke-width="2"/>'
            )
        parts.append(f'<text x="{x + 7:.1f}" y="{y - 6:.1f}" font-size="10">{escape(o.id)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def _span(low: float, high: float) -> tuple[float, float]:
    margin = (high - low) * 0.08 or abs(high) * 0.01 or 1.0
    return low - margin, high + margin


def _axes(
    width: int, height: int, pad: int, xs: tuple[float, float], ys: tuple[float, float]
) -> list[str]:
    bottom, right = height - pad, width - pad
    return [
        f'<line x1="{pad}" y1="{bottom}" x2="{right}" y2="{bottom}" stroke="#333"/>',
        f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{bottom}" stroke="#333"/>',
        f'<text x="{width / 2}" y="{height - 15}" text-anchor="middle" font-size="12">'
        "latency, median ms (lower is better)</text>",
        f'<text x="15" y="{height / 2}" font-size="12" text-anchor="middle" '
        f'transform="rotate(-90 15 {height / 2})">cosine mean vs original (higher is better)'
        "</text>",
        f'<text x="{pad}" y="{bottom + 15}" font-size="10">{xs[0]:.2f}</text>',
        f'<text x="{right}" y="{bottom + 15}" font-size="10" text-anchor="end">{xs[1]:.2f}</text>',
        f'<text x="{pad - 4}" y="{bottom}" font-size="10" text-anchor="end">{ys[0]:.4f}</text>',
        f'<text x="{pad - 4}" y="{pad + 4}" font-size="10" text-anchor="end">{ys[1]:.4f}</text>',
    ]
