"""The report's figures as PNG bytes: the reward-vs-KL frontier and training curves.

Figures are drawn with matplotlib's object API (no pyplot, no global backend) under its default
style, so a user's matplotlibrc cannot change them, and saved without the version stamp matplotlib
writes into PNG metadata: the same data give the same bytes.
"""

from __future__ import annotations

import io
import math

DPI = 120


def _palette(n: int) -> list:
    """n colours: tab10's ten, then tab20's light shades of them in the same order (light blue, light orange, ...:
    the paper's and the 2024 methods together draw 11 fronts), then round again."""
    from matplotlib import colormaps

    colors = [colormaps["tab10"](i) for i in range(10)] + [colormaps["tab20"](2 * i + 1) for i in range(10)]
    return [colors[i % len(colors)] for i in range(n)]


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def frontier_png(task: str, reward_label: str, algos: list[dict], budget: float, origin: dict | None = None) -> bytes:
    """Reward vs KL: each algorithm's points faint and its frontier as a bold step function; the origin once.

    `algos`: per algorithm {"algo", "points": [(kl, reward)] of every (run, checkpoint), "front":
    [(kl, reward)] by rising KL, "max_kl" (its largest KL), "bound" (its KL is an analytic upper
    bound: best-of-N), "label"}. The step runs from the algorithm's first front point to its
    largest KL: F(k), the best reward among its points with KL <= k, where it is defined. Points
    at a KL bound are hollow, their step dashed, with an arrow pointing left (the true KL is at
    most that). `origin`: the starting policy {"kl": 0, "reward"}, drawn once as a black star.
    """
    import matplotlib.style
    from matplotlib.figure import Figure

    with matplotlib.style.context("default"):
        fig = Figure(figsize=(9.5, 5.0), layout="constrained")
        ax = fig.add_subplot()
        for color, a in zip(_palette(len(algos)), algos):
            bound = a.get("bound", False)
            if a["points"]:
                xs, ys = zip(*a["points"])
                if bound:
                    ax.scatter(xs, ys, s=22, facecolors="none", edgecolors=[color], alpha=0.6, linewidths=1)
                else:
                    ax.scatter(xs, ys, s=14, color=color, alpha=0.25, linewidths=0)
            if a["front"]:
                xs, ys = (list(v) for v in zip(*a["front"]))
                end = a.get("max_kl", xs[-1])
                if math.isfinite(end) and end > xs[-1]:
                    xs, ys = xs + [end], ys + [ys[-1]]
                # The Pareto step function: the best reward reached at or below each KL, as the area is computed.
                ax.step(
                    xs,
                    ys,
                    where="post",
                    color=color,
                    linewidth=2.2,
                    linestyle="--" if bound else "-",
                    label=a["label"],
                )
                fx, fy = zip(*a["front"])
                ax.plot(
                    fx,
                    fy,
                    linestyle="none",
                    marker="<" if bound else "o",
                    markersize=6 if bound else 5,
                    markerfacecolor="white" if bound else color,
                    markeredgecolor=color,
                )
        if origin is not None:
            ax.plot(
                [0.0],
                [origin["reward"]],
                linestyle="none",
                marker="*",
                markersize=13,
                color="black",
                label=f"starting policy (reference, KL 0): {origin['reward']:.3g}",
                zorder=5,
            )
        if math.isfinite(budget):
            ax.axvline(budget, color="0.35", linestyle="--", linewidth=1, label=f"KL budget {budget:.3g} nats")
        ax.set_xlabel("KL to reference (nats)")
        ax.set_ylabel(reward_label)
        ax.set_title(
            f"{task}: {reward_label} vs KL to the reference\nfaint: every evaluated policy; bold: each algorithm's "
            "frontier, the best seed-averaged reward at KL ≤ k\nhollow points, dashed: KL at its analytic upper "
            "bound (best-of-N)",
            fontsize=8,
        )
        ax.grid(alpha=0.3)
        right = max([1.0] + [a["max_kl"] for a in algos if math.isfinite(a.get("max_kl", math.nan))])
        ax.set_xlim(left=-0.02 * right)
        ax.legend(
            fontsize=7,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            frameon=True,
            title="area up to the KL budget",
            title_fontsize=7,
        )
        return _png(fig)


def curves_png(algo: str, metrics: list[str], runs: list[dict]) -> bytes:
    """One small panel per training metric, one line per run, coloured by setting.

    `runs`: {"setting", "seed", "log": train_log rows}, sorted by setting then seed.
    """
    import matplotlib.style
    from matplotlib.figure import Figure

    settings = list(dict.fromkeys(r["setting"] for r in runs))
    colors = dict(zip(settings, _palette(len(settings))))
    with matplotlib.style.context("default"):
        fig = Figure(figsize=(3.4 * len(metrics), 2.7), layout="constrained")
        axes = fig.subplots(1, len(metrics), squeeze=False)[0]
        for ax, metric in zip(axes, metrics):
            labelled = set()
            for r in runs:
                points = [(row["step"], row[metric]) for row in r["log"] if isinstance(row.get(metric), (int, float))]
                if not points:
                    continue
                xs, ys = zip(*points)
                label = r["setting"] if r["setting"] not in labelled else None
                labelled.add(r["setting"])
                # A run that logged once or twice would draw no visible line: mark its points.
                ax.plot(
                    xs,
                    ys,
                    color=colors[r["setting"]],
                    linewidth=1.2,
                    alpha=0.85,
                    label=label,
                    marker="o" if len(xs) <= 2 else None,
                    markersize=3,
                )
            ax.set_title(f"{algo}: {metric}", fontsize=9)
            ax.set_xlabel("optimizer step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        if len(settings) <= 8:
            axes[0].legend(fontsize=6, loc="best")
        return _png(fig)
