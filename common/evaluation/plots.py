"""PNG figures for run comparison: curves, empirical CDFs, qualitative overlays, run summaries, instability diagnostic.

Figures are drawn with `matplotlib.figure.Figure` (Agg canvas), so nothing touches pyplot's global state or needs a
display, and each PNG is written atomically.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from common.errors import ensure_absent
from common.files import atomic_output


def save_figure(figure: Figure, path: str | os.PathLike, overwrite: bool = False, dpi: int = 120) -> Path:
    """Write ``figure`` as PNG atomically.

    Raises:
        FileExistsError: when ``path`` exists and ``overwrite`` is False.
    """
    ensure_absent(path, overwrite=overwrite)
    with atomic_output(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi, bbox_inches="tight")
    return Path(path)


def plot_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]] | Sequence[float]],
    path: str | os.PathLike,
    xlabel: str = "epoch",
    ylabel: str = "validation Dice",
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """Line plot of several named curves.

    Args:
        curves: name to ``(x, y)`` or to ``y`` alone (x is then ``1..len(y)``).
        path: output PNG.
        xlabel: x-axis label.
        ylabel: y-axis label.
        title: figure title.
        overwrite: replace an existing file.

    Returns:
        The written path.
    """
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for name, curve in curves.items():
        is_pair = isinstance(curve, tuple) and len(curve) == 2 and np.ndim(curve[0]) == 1
        x, y = curve if is_pair else (np.arange(1, len(curve) + 1), curve)
        axes.plot(x, y, label=name, linewidth=1.2)
    axes.set(xlabel=xlabel, ylabel=ylabel, title=title)
    axes.grid(alpha=0.3)
    if curves:
        axes.legend(fontsize="small")
    return save_figure(figure, path, overwrite=overwrite)


def plot_ecdf(
    samples: Mapping[str, Sequence[float]],
    path: str | os.PathLike,
    xlabel: str = "final validation Dice",
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """Empirical cumulative distribution functions of named samples (the RW paper's Figure 5).

    Non-finite values are left out of each sample.

    Args:
        samples: name to values (for example the final validation Dice of every seed).
        path: output PNG.
        xlabel: x-axis label.
        title: figure title.
        overwrite: replace an existing file.

    Returns:
        The written path.
    """
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for name, values in samples.items():
        finite = np.asarray(values, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        if finite.size:
            axes.ecdf(finite, label=f"{name} (n={finite.size})")
    axes.set(xlabel=xlabel, ylabel="fraction of runs", title=title, ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    if samples:
        axes.legend(fontsize="small")
    return save_figure(figure, path, overwrite=overwrite)


def _label_colormap(num_classes: int) -> tuple[ListedColormap, BoundaryNorm]:
    """Transparent background and distinct colours for labels ``1..num_classes-1``."""
    colours = colormaps["tab10" if num_classes <= 11 else "tab20"](np.arange(max(num_classes - 1, 1)) % 20)
    colours[:, 3] = 0.45
    colormap = ListedColormap(np.vstack([[0.0, 0.0, 0.0, 0.0], colours]))
    return colormap, BoundaryNorm(np.arange(-0.5, num_classes + 0.5), colormap.N)


def _check_slices(image: np.ndarray, *others: np.ndarray) -> None:
    if image.ndim != 2:
        raise ValueError(f"expected a 2D image slice, got shape {image.shape}.")
    for other in others:
        if other.shape != image.shape:
            raise ValueError(f"slice shapes differ: image {image.shape}, overlay {other.shape}.")


def plot_segmentation_overlay(
    image: np.ndarray,
    label: np.ndarray,
    prediction: np.ndarray,
    path: str | os.PathLike,
    num_classes: int | None = None,
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """Three panels of one 2D slice: the image, the image with the label, the image with the prediction.

    Args:
        image: 2D intensity slice.
        label: 2D integer ground truth.
        prediction: 2D integer prediction.
        path: output PNG.
        num_classes: number of classes (from the data when ``None``).
        title: figure title.
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        ValueError: when the slices are not 2D arrays of one shape.
    """
    _check_slices(image, label, prediction)
    figure = Figure(figsize=(10, 3.6))
    _draw_overlays(figure.subplots(1, 3), image, {"image": None, "label": label, "prediction": prediction}, num_classes)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path, overwrite=overwrite)


def _draw_overlays(
    panels: Sequence, image: np.ndarray, overlays: Mapping[str, np.ndarray | None], num_classes: int | None
) -> None:
    """One panel per named overlay: the image, with the labels (``None``: the image alone) over it."""
    present = [overlay for overlay in overlays.values() if overlay is not None]
    num_classes = num_classes or int(max(overlay.max() for overlay in present)) + 1
    colormap, norm = _label_colormap(num_classes)
    for axes, (name, overlay) in zip(panels, overlays.items(), strict=True):
        axes.imshow(image.T, cmap="gray", origin="lower")
        if overlay is not None:
            axes.imshow(overlay.T, cmap=colormap, norm=norm, origin="lower", interpolation="nearest")
        axes.set_title(name)
        axes.axis("off")


def plot_run_summary(
    train_loss: tuple[Sequence[float], Sequence[float]],
    validation_dice: tuple[Sequence[float], Sequence[float]],
    image: np.ndarray,
    label: np.ndarray,
    prediction: np.ndarray,
    path: str | os.PathLike,
    num_classes: int | None = None,
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """One training run on one figure: its training curve, and a segmented slice over its image.

    Left, the mean training loss per epoch and, on a second axis, the validation Dice at the validated epochs; then
    the slice with its ground truth and with the prediction over it.

    Args:
        train_loss: ``(epochs, loss)`` of the training.
        validation_dice: ``(epochs, Dice)`` of the validation runs.
        image: 2D intensity slice.
        label: 2D integer ground truth.
        prediction: 2D integer prediction.
        path: output PNG.
        num_classes: number of classes (from the data when ``None``).
        title: figure title.
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        ValueError: when the slices are not 2D arrays of one shape.
    """
    _check_slices(image, label, prediction)
    figure = Figure(figsize=(13, 3.6))
    curve, *panels = figure.subplots(1, 3, width_ratios=[1.4, 1, 1])
    curve.plot(*train_loss, color="tab:blue", linewidth=1.2)
    curve.set(xlabel="epoch", ylabel="training loss")
    curve.xaxis.set_major_locator(MaxNLocator(integer=True))
    curve.yaxis.label.set_color("tab:blue")
    curve.grid(alpha=0.3)
    dice = curve.twinx()
    dice.plot(*validation_dice, color="tab:orange", marker="o", markersize=3, linewidth=1.2)
    dice.set(ylabel="validation Dice", ylim=(0, 1))
    dice.yaxis.label.set_color("tab:orange")
    _draw_overlays(panels, image, {"ground truth": label, "final weights' segmentation": prediction}, num_classes)
    if title:
        figure.suptitle(title)
    return save_figure(figure, path, overwrite=overwrite)


def plot_diagnostic_overlay(
    image: np.ndarray,
    counts: Mapping[str, np.ndarray],
    path: str | os.PathLike,
    title: str = "",
    overwrite: bool = False,
) -> Path:
    """The instability diagnostic over an image slice, one panel per RW map (like the RW paper's Figure 3).

    Each panel shows, over the image, the number of negative components of the RW-loss gradient per pixel; one
    negative component is drawn transparent, so only the pixels where the gradient pushes towards several classes
    (or none) are coloured. The panel title gives the fraction of pixels with more than one.

    Args:
        image: 2D intensity slice.
        counts: map name to the 2D per-pixel count (see `common.evaluation.diagnostics.negative_component_count`).
        path: output PNG.
        title: figure title.
        overwrite: replace an existing file.

    Returns:
        The written path.

    Raises:
        ValueError: when a count slice does not match the image.
    """
    _check_slices(image, *counts.values())
    max_count = max([int(c.max()) for c in counts.values()] + [2])
    colours = np.empty((max_count + 1, 4))
    colours[0] = (0.2, 0.4, 1.0, 0.8)  # no negative component
    colours[1] = (0.0, 0.0, 0.0, 0.0)  # exactly one, the well-posed case
    colours[2:] = colormaps["autumn_r"](np.linspace(0.0, 1.0, max_count - 1))  # yellow (2) to red (most)
    colormap = ListedColormap(colours)
    norm = BoundaryNorm(np.arange(-0.5, max_count + 1.5), colormap.N)
    figure = Figure(figsize=(4.2 * len(counts) + 0.8, 4))
    panels = np.atleast_1d(figure.subplots(1, len(counts)))
    mappable = None
    for axes, (name, count) in zip(panels, counts.items(), strict=True):
        axes.imshow(image.T, cmap="gray", origin="lower")
        mappable = axes.imshow(count.T, cmap=colormap, norm=norm, origin="lower", interpolation="nearest")
        axes.set_title(f"{name}: {np.mean(count > 1):.1%} of pixels with >1")
        axes.axis("off")
    if mappable is not None:
        colorbar = figure.colorbar(mappable, ax=list(panels), ticks=range(max_count + 1), shrink=0.85)
        colorbar.set_label("negative gradient components")
    if title:
        figure.suptitle(title)
    return save_figure(figure, path, overwrite=overwrite)
