"""The per-epoch history of a training run (Keras CSVLogger rows across resumed runs): the best epoch by
the monitored metric, and the curves figure."""

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 100


def read_history(path: str | Path) -> pd.DataFrame:
    """Per-epoch history across resumed runs (a re-run epoch keeps its last record)."""
    history = pd.read_csv(path)
    return history.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def best_epoch_row(history: pd.DataFrame, first_epoch: int, monitor: str, mode: str) -> pd.Series | None:
    """The history row of the best `monitor` value from `first_epoch` on (None when there is none)."""
    values = history.loc[history["epoch"] >= first_epoch, monitor]
    values = values[np.isfinite(values)]
    if values.empty:
        return None
    return history.loc[values.idxmax() if mode == "max" else values.idxmin()]


def best_monitored(history_csv: str | Path, first_epoch: int, monitor: str, mode: str) -> float | None:
    """Best finite `monitor` value recorded from `first_epoch` on (a resumed run's bar to beat), else None."""
    if not Path(history_csv).exists():
        return None
    best = best_epoch_row(read_history(history_csv), first_epoch, monitor, mode)
    return None if best is None else float(best[monitor])


def training_curves_figure(history: pd.DataFrame) -> Figure:
    """Loss, Dice, IoU and learning rate per epoch (train and validation) from the Keras history table."""
    fig = Figure(figsize=(12.0, 3.2), dpi=DPI)
    FigureCanvasAgg(fig)
    epochs = history["epoch"] + 1
    for ax, name in zip(fig.subplots(1, 4), ("loss", "dice", "iou", "learning_rate")):
        ax.plot(epochs, history[name], label="train")
        if f"val_{name}" in history:
            ax.plot(epochs, history[f"val_{name}"], label="validation")
            ax.legend(frameon=False, fontsize=8)
        ax.set_title(name.replace("_", " "))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
