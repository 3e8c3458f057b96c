"""Render the README's Transformer-vs-RNN figure from a `--only recurrence` results JSON.

    python benchmarks/run.py --only recurrence         # measures; writes benchmarks/results/
    python scripts/render_recurrence_figures.py        # the newest such JSON -> docs/
    python scripts/render_recurrence_figures.py --results a.json b.json c.json
        # parts measured separately (benchmarks/recurrence.py --part P --out F)

Three panels, one per experiment of benchmarks/recurrence.py: seconds per training
step against sequence length, held-out exact match on reversal against length, and
the gradient norm reaching each input embedding against its distance from the
predicted position. The numbers are the JSON's: nothing is measured here.
"""

import argparse
import json
import pathlib

import matplotlib

matplotlib.use("Agg")  # files only, no display

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
FIGURE = REPO / "docs" / "transformers_vs_rnns.png"
COLORS = {
    "transformer": "tab:blue",
    "lstm": "tab:orange",
    "lstm_attention": "tab:orange",
    "lstm_plain": "tab:red",
    "gru": "tab:green",
    "rnn": "tab:purple",
}


def newest_recurrence_results() -> pathlib.Path:
    """The most recent results JSON that holds a complete recurrence part."""
    for path in sorted(RESULTS.glob("*.json"), reverse=True):
        part = json.loads(path.read_text())["results"].get("recurrence", {})
        if {"parallelism", "long_range", "gradients"} <= part.keys():
            return path
    raise SystemExit(
        f"No results JSON in {RESULTS} holds all three recurrence experiments: "
        "run `python benchmarks/run.py --only recurrence` first."
    )


def plot_parallelism(ax, results: dict) -> None:
    for name in ("transformer", "lstm"):
        model = results[name]
        label = f"{name} ({model['parameters'] / 1e3:.0f}k parameters)"
        step_ms = [seconds * 1e3 for seconds in model["step_s"]]
        ax.plot(results["lengths"], step_ms, "o-", color=COLORS[name], label=label)
    ax.set(xscale="log", yscale="log", xlabel="sequence length (tokens)", ylabel="ms per step")
    ax.set_xticks(results["lengths"], [str(n) for n in results["lengths"]])
    ax.xaxis.set_minor_locator(NullLocator())  # only the measured lengths are labelled
    ax.set_title(f"One training step, batch {results['batch']}")
    ax.legend(fontsize=8)


def plot_long_range(ax, results: dict) -> None:
    labels = {
        "transformer": "Transformer",
        "lstm_attention": "LSTM + attention",
        "lstm_plain": "LSTM, no attention",
        "gru": "GRU + attention",
    }
    for name, label in labels.items():
        ax.plot(
            results["lengths"],
            results[name]["exact_match"],
            "o--" if name == "lstm_plain" else "o-",
            color=COLORS[name],
            label=label,
        )
    ax.set(xscale="log", xlabel="string length (symbols)", ylabel="held-out exact match")
    ax.set_xticks(results["lengths"], [str(n) for n in results["lengths"]])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(-0.03, 1.03)
    ax.set_title(f"Reversal after {results['steps']} steps of {results['batch']}")
    ax.legend(fontsize=8)


def plot_gradients(ax, results: dict) -> None:
    for name in ("transformer", "lstm", "rnn"):
        for state, style in (("untrained", ":"), ("trained", "-")):
            ax.plot(
                results["distances"],
                results[name][state],
                style,
                color=COLORS[name],
                label=f"{name}, {state}",
            )
    ax.axvline(results["needed_distance"], color="gray", linewidth=0.8)
    ax.annotate(
        "the input\nthe answer needs",
        (results["needed_distance"], 0.5),
        xycoords=("data", "axes fraction"),
        ha="right",
        fontsize=8,
        color="gray",
    )
    ax.set(
        yscale="log",
        xlabel="distance from the predicted position",
        ylabel="|d loss / d input embedding|",
    )
    ax.set_title("Gradient reaching each input")
    ax.legend(fontsize=7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results",
        type=pathlib.Path,
        nargs="+",
        help="JSON files whose recurrence parts together hold all three experiments "
        "(default: the newest results JSON that holds them all)",
    )
    parser.add_argument("--output", type=pathlib.Path, default=FIGURE)
    args = parser.parse_args()
    paths = args.results or [newest_recurrence_results()]
    recurrence = {}
    for path in paths:
        recurrence |= json.loads(path.read_text())["results"]["recurrence"]

    figure, axes = plt.subplots(1, 3, figsize=(15, 4.2), constrained_layout=True)
    plot_parallelism(axes[0], recurrence["parallelism"])
    plot_long_range(axes[1], recurrence["long_range"])
    plot_gradients(axes[2], recurrence["gradients"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=120)
    print(f"wrote {args.output} from {', '.join(map(str, paths))}")


if __name__ == "__main__":
    main()
