"""Training-curve picture: loss and validation Dice per structure, against iterations (epochs in older runs)."""

from __future__ import annotations

from pathlib import Path

from medseg.io.atomic import atomic_path


def plot_training_curve(history, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = (
        "iterations" if "iterations" in history else "epoch"
    )  # budget runs end some epochs early: iterations are the clock
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot(history[x], history["loss"], color="tab:blue")
    ax1.set(xlabel=x, ylabel="training loss", title="training loss")
    val = history.dropna(subset=["val_mean_dice"]) if "val_mean_dice" in history else history.iloc[0:0]
    for col in [c for c in history.columns if c.startswith("val_dice_")]:
        ax2.plot(val[x], val[col], marker=".", label=col[len("val_dice_") :])
    if len(val):
        ax2.plot(val[x], val["val_mean_dice"], color="black", linewidth=2, label="mean")
        ax2.legend(fontsize=7, loc="lower right")
    ax2.set(xlabel=x, ylabel="Dice", ylim=(0, 1), title="validation Dice")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return Path(path)
