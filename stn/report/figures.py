"""Figures rendered from generated data, runs' curve.json files and saved models."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ..io import atomic_path, load_npz, read_json  # noqa: E402


def save(fig, path: Path, dpi: int = 110) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", bbox_inches="tight")
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


def learning_curves(results: Path, experiment: str, datasets: list[str], models: list[str], out: Path) -> Path:
    """Validation error against iteration, one panel per data set, mean over seeds."""
    fig, axes = plt.subplots(1, len(datasets), figsize=(3.2 * len(datasets), 3.0), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for m in models:
            curves = [read_json(p) for p in sorted((Path(results) / "runs" / experiment / ds / m).glob("seed*/curve.json"))]
            if not curves:
                continue
            its = [p["iteration"] for p in curves[0]]
            errs = np.mean([[p["val_error"] for p in c[: len(its)]] for c in curves if len(c) >= len(its)], axis=0)
            ax.plot(its, errs, marker="o", ms=2, label=m.replace("-", " "), lw=1.2,
                    ls="-" if m.startswith("ST") else "--")
        ax.set_title(ds)
        ax.set_xlabel("iteration")
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("validation error (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(8, len(labels)), fontsize=7, bbox_to_anchor=(0.5, -0.08))
    return save(fig, out)


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


def _load_run_model(results: Path, experiment: str, dataset: str, model: str, seed: int, params: Path):
    from ..experiments.classification import build_model

    built = build_model(dataset, model, read_json(params))
    path = Path(results) / "runs" / experiment / dataset / model / f"seed{seed}" / "model.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; train {experiment}/{dataset}/{model}/seed{seed} first")
    built.model.load_state_dict(torch.load(path, map_location="cpu", weights_only=False)["state_dict"])
    return built.model.eval()


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
    fig.suptitle(title, fontsize=9)
    return save(fig, out)


def parallel_transformers(model, x: torch.Tensor, y: torch.Tensor, out: Path, title: str) -> Path:
    """Table 4 (right): a two-channel input and what each of the parallel transformers makes of it."""
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
    for a, t in zip(axes[0], labels):
        a.set_title(t, fontsize=8)
    fig.suptitle(title, fontsize=9)
    return save(fig, out)
