"""The report's figures (matplotlib, PNG): fixed crops side by side, estimated vs true kernels, PSNR gain vs width.

* ``crops_<set>_x<s>.png``: the set's first image, a fixed central crop: LR (nearest-upscaled), every method's SR,
  HR; each caption gives the image's PSNR-Y (standard protocol).
* ``kernels_<set>_x<s>.png``: for the set's first images, the true kernel and each estimating method's kernel
  (block-centred, each panel scaled to its own maximum), kernel SAE in the caption.
* ``gain_vs_width_x<s>.png``: PSNR-Y gain over bicubic against the true kernel's width (sqrt of the larger
  covariance eigenvalue, HR px), one line per method (its mean in five equal-width bins shared by every method,
  over every set with kernels), dots per image.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from datamodules.io import load_rgb  # noqa: E402
from datamodules.test_sets import open_benchmark  # noqa: E402

CROP = 48  # LR pixels of the crop's side


def _crop_box(lr_shape: tuple[int, int]) -> tuple[int, int, int]:
    """Top, left and side (LR px) of the fixed central crop."""
    h, w = lr_shape
    side = min(CROP, h, w)
    return (h - side) // 2, (w - side) // 2, side


def crops_figure(
    path: Path, set_name: str, test_set: Path, scale: int, methods: Sequence, grid: dict, out: Path
) -> bool:
    """LR | each method with an SR image of the set's first image | HR; returns False if no method has one."""
    data = open_benchmark(test_set, scale)
    item = data[0]
    name = item["name"]
    lr = item["lr"].permute(1, 2, 0).numpy()
    top, left, side = _crop_box(lr.shape[:2])
    panels = [("LR (nearest)", np.kron(lr[top : top + side, left : left + side], np.ones((scale, scale, 1), np.uint8)))]
    for m in methods:
        c = grid.get((m.key, set_name, scale))
        png = out / "cells" / m.key / f"{set_name}_x{scale}" / "run" / "test_images" / f"{name}_x{scale}.png"
        if c is None or c["status"] != "ok" or not png.is_file():
            continue
        row = next((r for r in c["record"]["rows"] if r["name"] == name), {})
        sr = load_rgb(png)[scale * top : scale * (top + side), scale * left : scale * (left + side)]
        psnr = row.get("psnr_y")
        panels.append((f"{m.name}\n{psnr:.2f} dB" if isinstance(psnr, float) else m.name, sr))
    if len(panels) == 1:
        return False
    if "hr" in item:
        hr = item["hr"].permute(1, 2, 0).numpy()
        panels.append(("HR", hr[scale * top : scale * (top + side), scale * left : scale * (left + side)]))
    cols = min(len(panels), 5)
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, img) in zip(axes.flat, panels, strict=False):
        ax.imshow(img, interpolation="nearest")
        ax.set_title(title, fontsize=7)
    fig.suptitle(f"{set_name} x{scale}, {name}: LR crop {side}x{side} at ({left}, {top})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def kernels_figure(
    path: Path, set_name: str, scale: int, methods: Sequence, grid: dict, out: Path, images: int = 3
) -> bool:
    """True kernel and each method's estimate for the set's first ``images`` images; False if none estimates."""
    estimates: dict[str, dict[str, np.ndarray]] = {}
    saes: dict[str, dict[str, float]] = {}
    gts: dict[str, np.ndarray] = {}
    for m in methods:
        c = grid.get((m.key, set_name, scale))
        npz = out / "cells" / m.key / f"{set_name}_x{scale}" / "kernels.npz"
        if c is None or c["status"] != "ok" or not npz.is_file():
            continue
        with np.load(npz) as f:
            est = {k[4:]: f[k] for k in f.files if k.startswith("est/")}
            gts.update({k[3:]: f[k] for k in f.files if k.startswith("gt/")})
        if est:
            estimates[m.key] = est
            saes[m.key] = {r["name"]: r.get("kernel_sae") for r in c["record"]["rows"]}
    if not estimates:
        return False
    names = sorted(gts, key=_natural)[:images]
    labels = {m.key: m.name for m in methods}
    cols = 1 + len(estimates)
    fig, axes = plt.subplots(
        len(names), cols, figsize=(2.0 * cols, 2.4 * len(names)), squeeze=False, layout="constrained"
    )
    for r, name in enumerate(names):
        gt = gts[name]
        _kernel_panel(axes[r, 0], gt, f"{name}: true")
        for c, (key, est) in enumerate(estimates.items(), start=1):
            if name in est:
                sae = saes[key].get(name)
                caption = f"{labels[key]}\nSAE {sae:.3f}" if isinstance(sae, float) else labels[key]
                _kernel_panel(axes[r, c], est[name], caption)
            else:
                axes[r, c].axis("off")
    fig.suptitle(f"{set_name} x{scale}: estimated vs true kernels (block-centred)", fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _kernel_panel(ax, kernel: np.ndarray, title: str) -> None:
    ax.imshow(kernel, cmap="magma", interpolation="nearest")
    ax.set_title(title, fontsize=6)
    ax.axis("off")


def _natural(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def gain_figure(path: Path, scale: int, methods: Sequence, grid: dict, widths: dict[str, dict[str, float]]) -> bool:
    """PSNR-Y gain over bicubic against kernel width at ``scale`` over every set with kernels; False if no data."""
    fig, ax = plt.subplots(figsize=(7.5, 4.8), layout="constrained")
    drawn = False
    all_w = [w for per_set in widths.values() for w in per_set.values()]
    if not all_w:
        plt.close(fig)
        return False
    # Shared bins: every method is drawn at the same x (the mean width of the bin's images), so lines compare.
    all_a = np.array(all_w)
    edges = np.linspace(all_a.min(), all_a.max(), 6)

    def bin_of(w: np.ndarray) -> np.ndarray:
        return np.clip(np.digitize(w, edges[1:-1]), 0, len(edges) - 2)

    all_bins = bin_of(all_a)
    centres = {b: all_a[all_bins == b].mean() for b in np.unique(all_bins)}
    styles = ("-", "--", "-.", ":")
    markers = ("o", "s", "^", "D", "v", "P", "X", "*")
    for i, m in enumerate(methods):
        if m.key == "bicubic":
            continue
        xs, ys = [], []
        for set_name, per_set in widths.items():
            c = grid.get((m.key, set_name, scale))
            if c is None or c["status"] != "ok":
                continue
            for r in c["record"]["rows"]:
                if r["name"] in per_set and isinstance(r.get("psnr_y"), float):
                    xs.append(per_set[r["name"]])
                    ys.append(r["psnr_y"] - r["bicubic_psnr_y"])
        if not xs:
            continue
        xs_a, ys_a = np.array(xs), np.array(ys)
        colour = plt.get_cmap("tab20")(i % 20)
        ax.scatter(xs_a, ys_a, s=6, alpha=0.3, color=colour)
        bins = bin_of(xs_a)
        used = [b for b in sorted(centres) if (bins == b).any()]
        ax.plot(
            [centres[b] for b in used],
            [ys_a[bins == b].mean() for b in used],
            linestyle=styles[i % len(styles)],
            marker=markers[i % len(markers)],
            ms=4,
            color=colour,
            label=f"{m.name} ({len(xs)} images)",
        )
        drawn = True
    if drawn:
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xlabel("true kernel width: sqrt(larger covariance eigenvalue), HR px; line = mean over a width bin")
        ax.set_ylabel("PSNR-Y gain over bicubic (dB)")
        title = f"x{scale}: PSNR-Y gain over bicubic vs kernel width ({len(widths)} sets with kernels)"
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=6, loc="best")
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn
