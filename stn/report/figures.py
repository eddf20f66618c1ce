"""Figures rendered from generated data, runs' curve.json files and saved models."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..io import atomic_path, load_npz  # noqa: E402


def save(fig, path: Path, dpi: int = 110) -> Path:
    """The figure as `path` (PNG) and, beside it, the same figure as a PDF (vector, for LaTeX)."""
    path = Path(path)
    for target, kind in ((path, "png"), (path.with_suffix(".pdf"), "pdf")):
        with atomic_path(target) as tmp:
            fig.savefig(tmp, dpi=dpi, format=kind, bbox_inches="tight",
                        metadata={"CreationDate": None} if kind == "pdf" else None)  # the same figure, the same bytes
    plt.close(fig)
    return path


def data_samples(paths: dict[str, Path], out: Path, per_row: int = 10) -> Path:
    """A row of test images per data set."""
    fig, axes = plt.subplots(len(paths), per_row, figsize=(1.1 * per_row, 1.2 * len(paths)), squeeze=False)
    for r, (name, path) in enumerate(paths.items()):
        data = load_npz(path)
        for c in range(per_row):
            ax = axes[r, c]
            ax.imshow(data["x_test"][c], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, rotation=0, labelpad=18, fontsize=9)
            ax.set_title(str(int(data["y_test"][c])), fontsize=7)
    fig.suptitle("Distorted MNIST test samples (label above)", fontsize=10)
    return save(fig, out)


def learning_curves(curves: dict[tuple[str, str], list[list[dict]]], datasets: list[str], models: list[str],
                    out: Path) -> Path:
    """Validation error against iteration, one panel per data set: the mean over seeds as a line, the
    seeds' range as a band; percent on a log axis labelled in plain numbers.
    `curves[(dataset, model)]` holds each seed's curve.json."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from ..paper import display_name

    fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 3.0), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for m in models:
            runs = curves.get((ds, m)) or []
            if not runs:
                continue
            its = [p["iteration"] for p in runs[0]]
            errs = np.array([[p["val_error"] for p in c[: len(its)]] for c in runs if len(c) >= len(its)])
            line, = ax.plot(its, errs.mean(0), marker="o", ms=2, label=display_name(m), lw=1.2,
                            ls="-" if m.startswith("ST") else "--")
            if len(errs) > 1:
                ax.fill_between(its, errs.min(0), errs.max(0), color=line.get_color(), alpha=0.15, lw=0)
        ax.set_title(ds)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 3, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("validation error (%), log scale")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=7, bbox_to_anchor=(0.5, 0.0),
               title="lines: mean over seeds; bands: the seeds' range", title_fontsize=7)
    return save(fig, out)


def transformer_outputs(x: torch.Tensor, out: torch.Tensor, path: Path, title: str) -> Path:
    """Inputs (N, C, H, W) above the transformer's outputs (an MLflow artifact of every ST run)."""
    k = x.shape[0]
    fig, axes = plt.subplots(2, k, figsize=(1.3 * k, 2.8), squeeze=False)
    for i in range(k):
        axes[0, i].imshow(x[i, 0], cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(out[i, 0], cmap="gray", vmin=0, vmax=1)
        for a in axes[:, i]:
            a.axis("off")
    axes[0, 0].set_title("input", fontsize=8, loc="left")
    axes[1, 0].set_title("transformer output", fontsize=8, loc="left")
    fig.suptitle(title, fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def _outline(grid: torch.Tensor, w: int, h: int, align_corners: bool = False) -> list[np.ndarray]:
    """Polylines (in input pixel units) of the sampling grid's border and a few interior lines."""
    g = grid.detach().cpu().double()
    if align_corners:
        px, py = (g[..., 0] + 1) / 2 * (w - 1), (g[..., 1] + 1) / 2 * (h - 1)
    else:
        px, py = ((g[..., 0] + 1) * w - 1) / 2, ((g[..., 1] + 1) * h - 1) / 2
    pts = torch.stack([px, py], -1).numpy()  # (H', W', 2)
    hh, ww = pts.shape[:2]
    lines = [pts[0], pts[-1], pts[:, 0], pts[:, -1]]
    lines += [pts[i] for i in range(hh // 4, hh - 1, max(1, hh // 4))]
    lines += [pts[:, j] for j in range(ww // 4, ww - 1, max(1, ww // 4))]
    return lines


def st_vs_cnn(st_model, cnn_model, x: torch.Tensor, y: torch.Tensor, out: Path, title: str, k: int = 6) -> Path:
    """Table 1 (right): (a) inputs, (b) the predicted sampling grid on them, (c) the transformer's output,
    for test digits the ST model classifies correctly and the CNN does not."""
    st_model.eval()
    cnn_model.eval()
    with torch.no_grad():
        st_pred = st_model(x).argmax(1)
        cnn_pred = cnn_model(x).argmax(1)
    chosen = torch.nonzero((st_pred == y) & (cnn_pred != y)).flatten()[:k]
    note = "ST right, CNN wrong"
    if len(chosen) < k:  # a well-trained CNN may leave fewer such digits: fill with ST-correct ones, and say so
        extra = torch.nonzero(st_pred == y).flatten()
        extra = extra[~torch.isin(extra, chosen)][: k - len(chosen)]
        note += f" ({len(chosen)} found; others: both right)"
        chosen = torch.cat([chosen, extra])
    xs = x[chosen]
    with torch.no_grad():
        out_img, theta = st_model.transform(xs)
        st = st_model.sts[0]
        grid = st.transform.grid(theta.view(len(chosen), -1), st.out_size, st.align_corners)
    h, w = xs.shape[-2:]
    fig, axes = plt.subplots(3, len(chosen), figsize=(1.4 * len(chosen), 4.4), squeeze=False)
    for i in range(len(chosen)):
        img = xs[i, 0].cpu().numpy()
        axes[0, i].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[1, i].imshow(img, cmap="gray", vmin=0, vmax=1)
        for line in _outline(grid[i], w, h):
            axes[1, i].plot(line[..., 0], line[..., 1], color="tab:green", lw=0.8)
        axes[1, i].set_xlim(-0.5, w - 0.5)
        axes[1, i].set_ylim(h - 0.5, -0.5)
        axes[2, i].imshow(out_img[i, 0].cpu().numpy(), cmap="gray", vmin=0, vmax=1)
        axes[2, i].set_xlabel(f"ST {int(st_pred[chosen[i]])} / CNN {int(cnn_pred[chosen[i]])}", fontsize=7)
        for a in axes[:, i]:
            a.set_xticks([])
            a.set_yticks([])
    for r, label in enumerate(["(a) input", "(b) sampling grid", "(c) output"]):
        axes[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"{title}: {note}", fontsize=9)
    return save(fig, out)


def figure1(model, x: torch.Tensor, y: torch.Tensor, out: Path, title: str) -> Path:
    """Figure 1: (a) input, (b) the predicted transform drawn as the box it samples, (c) the transformer's
    output, (d) the prediction."""
    with torch.no_grad():
        pred = model(x).argmax(1)
        warped, theta = model.transform(x)
        st = model.sts[0]
        grid = st.transform.grid(theta, st.out_size, st.align_corners)
    h, w = x.shape[-2:]
    fig, axes = plt.subplots(len(x), 4, figsize=(6.4, 1.7 * len(x)), squeeze=False)
    for i in range(len(x)):
        img = x[i, 0].numpy()
        axes[i, 0].imshow(img, cmap="gray", vmin=0, vmax=1)
        axes[i, 1].imshow(img, cmap="gray", vmin=0, vmax=1)
        for line in _outline(grid[i], w, h)[:4]:  # the border only: a box
            axes[i, 1].plot(line[..., 0], line[..., 1], color="tab:red", lw=1.2)
        axes[i, 1].set_xlim(-0.5, w - 0.5)
        axes[i, 1].set_ylim(h - 0.5, -0.5)
        axes[i, 2].imshow(warped[i, 0].numpy(), cmap="gray", vmin=0, vmax=1)
        axes[i, 3].text(0.5, 0.5, str(int(pred[i])), ha="center", va="center", fontsize=28,
                        color="tab:green" if pred[i] == y[i] else "tab:red")
        for a in axes[i]:
            a.set_xticks([])
            a.set_yticks([])
    for a, t in zip(axes[0], ["(a) input", "(b) transform", "(c) output", "(d) prediction"]):
        a.set_title(t, fontsize=9)
    fig.suptitle(f"{title}\n(b): the region the transformer samples (red); (d): the prediction, green where right, "
                 f"red where wrong", fontsize=9)
    return save(fig, out)


def parallel_transformers(model, x: torch.Tensor, y: torch.Tensor, out: Path, title: str,
                          focus: dict[str, list[float]] | None = None) -> Path:
    """Table 4 (right): a two-channel input and what each of the parallel transformers makes of it; with `focus`
    (stn.experiments.channel_focus over the test set) each column's title gives how far its content moves (px)."""
    with torch.no_grad():
        pred = model(x).argmax(1)
        warped, _ = model.transform(x)  # (N, k·C, H, W)
    c = x.shape[1]
    k = warped.shape[1] // c
    fig, axes = plt.subplots(len(x), c * (k + 1), figsize=(1.3 * c * (k + 1), 1.45 * len(x)), squeeze=False)
    for i in range(len(x)):
        panels = [x[i, j] for j in range(c)] + [warped[i, j] for j in range(k * c)]
        for j, (a, p) in enumerate(zip(axes[i], panels)):
            a.imshow(p.numpy(), cmap="gray", vmin=0, vmax=1)
            a.set_xticks([])
            a.set_yticks([])
        axes[i, 0].set_ylabel(f"sum {int(y[i])}\npred {int(pred[i])}", fontsize=7)
    labels = [f"input ch{j + 1}" for j in range(c)] + [f"ST{t + 1} ch{j + 1}" for t in range(k) for j in range(c)]
    if focus:
        spreads = focus["input"] + [v for t in range(k) for v in focus[f"ST{t + 1}"]]
        labels = [f"{label}\nmoves {v:.1f} px" for label, v in zip(labels, spreads)]
    for a, t in zip(axes[0], labels):
        a.set_title(t, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save(fig, out)


def volumes_figure(volumes: torch.Tensor, flat: torch.Tensor, pred: torch.Tensor, labels: torch.Tensor, out: Path) -> Path:
    """Fig. 5: input volumes (N, 1, D, H, W) as max projections along depth and along x, the
    transformer's flattened output `flat` (N, 1, H', W') that the classifier sees, and the prediction."""
    n = len(volumes)
    fig, axes = plt.subplots(n, 3, figsize=(5.4, 1.8 * n), squeeze=False)
    for i in range(n):
        v = volumes[i, 0]
        axes[i, 0].imshow(v.amax(0).numpy(), cmap="gray")
        axes[i, 1].imshow(v.amax(2).numpy(), cmap="gray")
        axes[i, 2].imshow(flat[i, 0].numpy(), cmap="gray")
        axes[i, 2].set_xlabel(f"label {int(labels[i])}, predicted {int(pred[i])}", fontsize=7)
        for a in axes[i]:
            a.set_xticks([])
            a.set_yticks([])
    for a, t in zip(axes[0], ["input, max over depth", "input, max over x", "ST output, flattened"]):
        a.set_title(t, fontsize=8)
    fig.suptitle("3-D spatial transformer on extruded MNIST (appendix A.3)", fontsize=9)
    return save(fig, out)


def colocalisation_steps(images: np.ndarray, steps: list[int], boxes: np.ndarray, true_boxes: np.ndarray, digit: int,
                         variant: str, out_dir: Path) -> list[Path]:
    """Fig. 4: predicted boxes (red) against true boxes (green) on k images over the optimisation, as a grid
    of about seven recorded steps and as an animated GIF of all of them.
    `boxes` (frames, k, 4) and `true_boxes` (k, 4) in pixels (x0, y0, x1, y1); `steps[f]` names frame f."""
    from matplotlib import animation
    from matplotlib.patches import Rectangle

    k = boxes.shape[1]

    def draw(ax, img, box, true_box):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255)
        for (x0, y0, x1, y1), colour in [(true_box, "tab:green"), (box, "tab:red")]:
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, color=colour, lw=1.2))
        ax.set_xticks([])
        ax.set_yticks([])

    frames = list(range(len(steps)))
    shown = frames[:: max(1, len(frames) // 6)]
    if shown[-1] != frames[-1]:
        shown.append(frames[-1])
    fig, axes = plt.subplots(k, len(shown), figsize=(1.5 * len(shown), 1.55 * k), squeeze=False)
    for j, f in enumerate(shown):
        for i in range(k):
            draw(axes[i, j], images[i], boxes[f, i], true_boxes[i])
        axes[0, j].set_title(f"step {steps[f]}", fontsize=8)
    fig.suptitle(f"Co-localisation of '{digit}' ({variant}): predicted box (red), true box (green)", fontsize=9)
    grid_path = save(fig, Path(out_dir) / f"table5_{variant}_{digit}_steps.png")

    fig, axes = plt.subplots(1, k, figsize=(1.8 * k, 2.1), squeeze=False)

    def frame(n):
        for i in range(k):
            axes[0, i].clear()
            draw(axes[0, i], images[i], boxes[n, i], true_boxes[i])
        fig.suptitle(f"'{digit}' ({variant}), step {steps[n]}", fontsize=9)

    anim = animation.FuncAnimation(fig, frame, frames=len(frames))
    gif_path = Path(out_dir) / f"table5_{variant}_{digit}.gif"
    with atomic_path(gif_path) as tmp:
        anim.save(str(tmp), writer=animation.PillowWriter(fps=4))
    plt.close(fig)
    return [grid_path, gif_path]


def _sequence(labels) -> str:
    """Digits of a label row (N positions, class 10 = blank) as text."""
    return "".join(str(int(v)) for v in labels if int(v) != 10) or "-"


def sequence_transformers(panels: list, out: Path, title: str) -> Path:
    """Table 2 (right): per data set, test inputs with the region the first transformer samples drawn on
    them (red), and its output. `panels`: (name, x (N, C, H, W), grid (N, H', W', 2), output, labels (N, 5),
    predictions (N, 5))."""
    k = max(len(p[1]) for p in panels)
    fig, axes = plt.subplots(2 * len(panels), k, figsize=(1.6 * k, 3.4 * len(panels)), squeeze=False)
    for r, (name, x, grid, warped, labels, preds) in enumerate(panels):
        h, w = x.shape[-2:]
        for i in range(len(x)):
            top, bottom = axes[2 * r, i], axes[2 * r + 1, i]
            img = x[i].permute(1, 2, 0).squeeze(-1).numpy()
            top.imshow(img, cmap="gray", vmin=0, vmax=1)
            for line in _outline(grid[i], w, h)[:4]:
                top.plot(line[..., 0], line[..., 1], color="tab:red", lw=1.0)
            top.set_xlim(-0.5, w - 0.5)
            top.set_ylim(h - 0.5, -0.5)
            bottom.imshow(warped[i].permute(1, 2, 0).squeeze(-1).clamp(0, 1).numpy(), cmap="gray", vmin=0, vmax=1)
            truth, pred = _sequence(labels[i]), _sequence(preds[i])
            bottom.set_xlabel(f"{truth} → {pred}", fontsize=7, color="tab:green" if truth == pred else "tab:red")
            for a in (top, bottom):
                a.set_xticks([])
                a.set_yticks([])
        axes[2 * r, 0].set_ylabel(f"{name}\ninput + region", fontsize=8)
        axes[2 * r + 1, 0].set_ylabel("transformer\noutput", fontsize=8)
    fig.suptitle(f"{title} (label → prediction; green: whole sequence right)", fontsize=9)
    return save(fig, out)


WINDOW_COLOURS = ("tab:red", "tab:green", "tab:blue", "tab:orange")


def _show(ax, image: torch.Tensor) -> None:
    """One image (C, H, W): grey in [0, 1], or ImageNet-normalised RGB."""
    if image.shape[0] == 3:
        mean, std = torch.tensor((0.485, 0.456, 0.406)).view(3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
        ax.imshow((image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy())
    else:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=1)


def attention_windows(panels: list, out: Path, title: str) -> Path:
    """Table 3 (right): per set, test images with each transformer's attention window in its own colour
    (window 1 red, 2 green, 3 blue, 4 orange) and, where known, the parts as dotted white boxes.
    `panels`: (name, x (N, C, H, W), windows (N, k, 4) px, parts (N, P, 4) px or None, labels, predictions)."""
    n = max(len(p[1]) for p in panels)
    fig, axes = plt.subplots(len(panels), n, figsize=(1.7 * n, 1.9 * len(panels)), squeeze=False)
    for r, (name, x, boxes, parts, labels, preds) in enumerate(panels):
        for i in range(n):
            ax = axes[r, i]
            ax.set_xticks([])
            ax.set_yticks([])
            if i >= len(x):
                ax.axis("off")
                continue
            _show(ax, x[i])
            for j, (x0, y0, x1, y1) in enumerate(boxes[i].tolist()):
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=1.4,
                                           color=WINDOW_COLOURS[j % len(WINDOW_COLOURS)]))
            for x0, y0, x1, y1 in ([] if parts is None else parts[i].tolist()):
                ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=0.8, ls=":",
                                           color="white"))
            h, w = x.shape[-2:]
            ax.set_xlim(-1.5, w + 0.5)  # a window on the image's edge stays visible
            ax.set_ylim(h + 0.5, -1.5)
            ok = int(labels[i]) == int(preds[i])
            ax.set_xlabel(f"{int(labels[i])} → {int(preds[i])}", fontsize=7, color="tab:green" if ok else "tab:red")
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"{title}\n(window 1 red, 2 green, 3 blue, 4 orange; dotted: the parts; label → prediction)", fontsize=9)
    return save(fig, out)


def versus_paper(beside: dict[str, list[tuple[str, float, float | None, float]]], out: Path, title: str,
                 metric_words: str) -> Path:
    """Ours beside the paper's, one panel per data set (the table's columns): for each row (x) our number as a
    filled circle (mean, ± std over seeds as a bar) and the paper's as an open diamond, so the eye can check that
    the two rise and fall together; each panel's title counts the pairs of rows the paper ranks apart that ours
    rank the same way (stn.report.tables.ranked_alike). A log axis where the numbers span more than 10×.
    `beside[data set]` holds (row label, our mean, our std or None, the paper's number) per cell."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    from .tables import ranked_alike

    widest = max(len(cells) for cells in beside.values())
    cols = min(3, len(beside))
    rows = -(-len(beside) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.0, 0.36 * widest + 0.8) * cols, 2.9 * rows + 0.5),
                             squeeze=False, sharey=True)
    for ax in axes.flat[len(beside):]:
        ax.set_visible(False)
    values = [v for cells in beside.values() for c in cells for v in (c[1], c[3])]
    log = min(values) > 0 and max(values) / min(values) > 10
    for ax, (dataset, cells) in zip(axes.flat, beside.items()):
        x = np.arange(len(cells))
        ax.errorbar(x - 0.12, [c[1] for c in cells], yerr=[c[2] or 0.0 for c in cells], fmt="o", ms=5, capsize=2,
                    color="tab:blue", label="ours (mean ± std over seeds)")
        ax.plot(x + 0.12, [c[3] for c in cells], "D", ms=5, mfc="none", color="tab:red", label="the paper's")
        same, total = ranked_alike([(c[1], c[3]) for c in cells])
        ax.set_title(f"{dataset}" + (f": {same}/{total} pairs in the paper's order" if total else ""), fontsize=8)
        slanted = max(len(c[0]) for c in cells) > 3  # model names slant; Table 5's classes 0-9 stand upright
        ax.set_xticks(x, [c[0] for c in cells], rotation=60 if slanted else 0, ha="right" if slanted else "center",
                      fontsize=7)
        ax.grid(alpha=0.3, which="both")
        if log:
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(NullFormatter())
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{metric_words} (%)" + (", log scale" if log else ""), fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.suptitle(f"{title}: ours beside the paper's", fontsize=10)
    fig.tight_layout(rect=(0, 0.06 / rows, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=7, bbox_to_anchor=(0.5, 0.0))
    return save(fig, out)
