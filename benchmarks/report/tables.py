"""The report's tables: Markdown and CSV from the cells' records (rows = methods, columns = set x scale).

Scores of the standard protocol come from the test runs themselves. Each method's own paper protocol
(``Method.protocol``) is recomputed from the saved SR PNGs (the metric protocol rounds SR to 8 bit first, so a
saved PNG measures the same as the tensor) and cached beside the cell (``protocol_<name>.json``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from datamodules.io import load_rgb, to_tensor
from datamodules.test_sets import open_benchmark
from lightning_modules.metrics import PSNR_CLAMP_DB
from lightning_modules.metrics.image import psnr_y, ssim_y
from lightning_modules.metrics.protocol import get_metric_protocol, resolve_shave

METRICS = ("psnr_y", "ssim_y", "kernel_sae", "kernel_l2", "kernel_psnr", "lpips", "seconds")


def mean_of(record: dict, column: str) -> float | None:
    """Mean of a per-image column over the cell's images (``None`` if the cell has no such column)."""
    values = [r[column] for r in record.get("rows", []) if isinstance(r.get(column), float)]
    return float(np.mean(values)) if values else None


def protocol_scores(record: dict, folder: Path, test_set: Path, protocol: str) -> dict[str, float]:
    """Mean PSNR-Y / SSIM-Y of the cell's saved SR images under ``protocol`` (cached in ``folder``; ``{}`` without HR).

    PSNR is clamped at ``PSNR_CLAMP_DB`` as in the test's own metric.
    """
    cache = folder / f"protocol_{protocol}.json"
    if cache.is_file():
        cached = json.loads(cache.read_text())
        if cached.get("inputs_key") == record["inputs_key"]:
            return cached["scores"]
    spec = get_metric_protocol(protocol)
    scale = int(record["scale"])
    shave = resolve_shave(spec, scale)
    data = open_benchmark(test_set, scale)
    if not data.has_hr:
        return {}
    psnrs, ssims = [], []
    for i in range(len(data)):
        item = data[i]
        sr_png = folder / "run" / "test_images" / f"{item['name']}_x{scale}.png"
        sr = to_tensor(load_rgb(sr_png))[None].double() / 255
        hr = item["hr"][None].double() / 255
        psnr = psnr_y(sr, hr, shave, round_y=spec.round_y, quantize=spec.quantize).clamp(max=PSNR_CLAMP_DB)
        psnrs.append(float(psnr[0]))
        ssims.append(float(ssim_y(sr, hr, shave, spec.round_y, spec.quantize, spec.ssim_window)[0]))
    scores = {"psnr_y": float(np.mean(psnrs)), "ssim_y": float(np.mean(ssims))}
    cache.write_text(json.dumps({"inputs_key": record["inputs_key"], "scores": scores}))
    return scores


def _cell_text(status: dict, a: str, b: str | None = None, digits: tuple[int, int] = (2, 4)) -> str:
    """``a / b`` of an ok cell, else its status (``missing``, ``n/a``, ``failed``, ``-``)."""
    if status["status"] != "ok":
        return {"missing": "missing", "n/a": "n/a", "failed": "failed", "no_recipe": "-"}[status["status"]]
    va = status["means"].get(a)
    if va is None:
        return "-"
    text = f"{va:.{digits[0]}f}"
    vb = status["means"].get(b) if b else None
    return f"{text} / {vb:.{digits[1]}f}" if vb is not None else text


def markdown_table(
    title: str, methods: Sequence, columns: Sequence[tuple[str, int]], grid: dict, a: str, b: str | None = None,
    digits: tuple[int, int] = (2, 4), only_rows_with: str | None = None,
) -> str:  # fmt: skip
    """One Markdown table: a row per method, a column per ``(set, scale)``; ``only_rows_with``: skip rows without it."""
    head = f"| {title} | " + " | ".join(f"{s} x{k}" for s, k in columns) + " |"
    lines = [head, "|---" * (len(columns) + 1) + "|"]
    for m in methods:
        cells = [grid[(m.key, s, k)] for s, k in columns]
        if only_rows_with and not any(
            c["status"] == "ok" and c["means"].get(only_rows_with) is not None for c in cells
        ):
            continue
        lines.append(f"| {m.name} | " + " | ".join(_cell_text(c, a, b, digits) for c in cells) + " |")
    return "\n".join(lines)


def mean_gain(key: str, scale: int, grid: dict) -> tuple[float | None, int, int]:
    """A row's mean PSNR-Y gain over bicubic at ``scale``: (mean over its ok cells, cells above bicubic, ok cells).

    Each cell's gain is its mean PSNR-Y less bicubic's on the same images (the standard protocol of the same test).
    """
    gains = [
        c["means"]["psnr_y"] - c["means"]["bicubic_psnr_y"]
        for (k, _, s), c in grid.items()
        if k == key and s == scale and c["status"] == "ok"
        and None not in (c["means"].get("psnr_y"), c["means"].get("bicubic_psnr_y"))
    ]  # fmt: skip
    if not gains:
        return None, 0, 0
    return float(np.mean(gains)), sum(g > 0 for g in gains), len(gains)


def gain_table(methods: Sequence, scales: Sequence[int], grid: dict) -> str:
    """Per row and scale: mean PSNR-Y gain over bicubic over the sets it ran on, and on how many it beats bicubic."""
    lines = ["| method | " + " | ".join(f"gain x{s} (dB) | sets above bicubic x{s}" for s in scales) + " |"]
    lines.append("|---" * (2 * len(scales) + 1) + "|")
    for m in methods:
        if m.key == "bicubic":
            continue
        parts = []
        for s in scales:
            gain, above, n = mean_gain(m.key, s, grid)
            parts.append(f"{gain:+.2f} | {above} of {n}" if gain is not None else "- | -")
        lines.append(f"| {m.name} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def cost_table(methods: Sequence, scales: Sequence[int], grid: dict) -> str:
    """Parameters and mean seconds per image per scale (over every image of the scale's ok cells)."""
    lines = ["| method | " + " | ".join(f"parameters x{s} | s / image x{s}" for s in scales) + " |"]
    lines.append("|---" * (2 * len(scales) + 1) + "|")
    for m in methods:
        parts = []
        for s in scales:
            oks = [c for (key, _, k), c in grid.items() if key == m.key and k == s and c["status"] == "ok"]
            secs = [r["seconds"] for c in oks for r in c["record"]["rows"] if isinstance(r.get("seconds"), float)]
            params = {c["record"]["parameters"] for c in oks}
            parts.append(
                f"{', '.join(f'{p:,}' for p in sorted(params)) or '-'} | {np.mean(secs):.2f}" if secs else "- | -"
            )
        lines.append(f"| {m.name} | " + " | ".join(parts) + " |")
    return "\n".join(lines)


def provenance_table(methods: Sequence, grid: dict, config_dir: Path) -> str:
    """Each method's checkpoints: SHA-256, steps, batch, data, device, training config (one line per file).

    The training config (resolved YAML, from the checkpoint's provenance) is written to ``config_dir``.
    """
    lines = ["| method | scale | slot | checkpoint (SHA-256) | steps | batch x crop side | data | device "
             "| "
             "training config |", "|---" * 9 + "|"]  # fmt: skip
    seen = set()
    for m in methods:
        for (key, _, scale), c in sorted(grid.items(), key=lambda kv: kv[0][2]):
            if key != m.key or c["status"] != "ok":
                continue
            for slot, r in c["record"]["checkpoints"].items():
                if (m.key, scale, slot) in seen:
                    continue
                seen.add((m.key, scale, slot))
                dirs = (
                    ", ".join(Path(d).name for d in r.get("train_dirs") or [])
                    if isinstance(r.get("train_dirs"), list)
                    else str(r.get("train_dirs"))
                )
                device = r["device"] + (
                    f" ({r['world_size']} proc x {r['threads']} threads)" if r.get("threads") else ""
                )
                config = "-"
                if r.get("config"):
                    config_dir.mkdir(parents=True, exist_ok=True)
                    (config_dir / f"{r['sha256']}.yaml").write_text(r["config"])
                    config = f"[{r['sha256']}.yaml]({config_dir.name}/{r['sha256']}.yaml)"
                lines.append(
                    f"| {m.name} | x{scale} | {slot} | `{r['file']}` ({r['sha256']}) | {r['global_step']:,} | "
                    f"{r.get('batch_size')} x {r.get('patch_size')} | {dirs} | {device} | {config} |"
                )
    return "\n".join(lines)


def write_csv(path: Path, methods: Sequence, columns: Sequence[tuple[str, int]], grid: dict) -> None:
    """The wide CSV: a row per method; per ``(set, scale)`` each metric's mean; then each scale's :func:`mean_gain`."""
    metrics = [*METRICS, "paper_psnr_y", "paper_ssim_y", "bicubic_psnr_y", "bicubic_ssim_y"]
    scales = sorted({k for _, k in columns})
    header = ["method", "name", "paper_protocol"] + [f"{s}_x{k}_{m}" for s, k in columns for m in ["status", *metrics]]
    header += [f"mean_gain_x{k}" for k in scales] + [f"sets_above_bicubic_x{k}" for k in scales]
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for m in methods:
            row: list = [m.key, m.name, m.protocol]
            for s, k in columns:
                c = grid[(m.key, s, k)]
                row.append(c["status"])
                row += [_fmt(c.get("means", {}).get(x)) for x in metrics]
            gains = [mean_gain(m.key, k, grid) for k in scales]
            row += [_fmt(g) for g, _, _ in gains] + [f"{a} of {n}" if n else "" for _, a, n in gains]
            writer.writerow(row)


def write_cells_csv(path: Path, grid: dict) -> None:
    """The long CSV: one row per cell with its status, means, parameters, command and checkpoint hashes."""
    fields = ["method", "set", "scale", "status", "images", *METRICS, "paper_psnr_y", "paper_ssim_y", "parameters",
              "checkpoints", "set_fingerprint", "command", "error"]  # fmt: skip
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for (key, s, k), c in grid.items():
            rec = c.get("record") or {}
            writer.writerow({
                "method": key, "set": s, "scale": k, "status": c["status"], "images": len(rec.get("rows", [])),
                **{x: _fmt(c.get("means", {}).get(x)) for x in [*METRICS, "paper_psnr_y", "paper_ssim_y"]},
                "parameters": rec.get("parameters", ""),
                "checkpoints": " ".join(f"{slot}={r['sha256']}" for slot, r in (rec.get("checkpoints") or {}).items()),
                "set_fingerprint": rec.get("set_fingerprint", ""), "command": rec.get("command", ""),
                "error": c.get("error", ""),
            })  # fmt: skip


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def kernel_widths(test_set: Path, scale: int) -> dict[str, float]:
    """Per image of a set with kernels: the kernel's width, sqrt of the larger covariance eigenvalue (HR px)."""
    data = open_benchmark(test_set, scale)
    if not data.has_kernels:
        return {}
    out = {}
    for name, kernel in zip(data.names, data.kernels, strict=True):
        k = kernel.double().clamp_min(0)
        k = k / k.sum()
        ys, xs = torch.meshgrid(
            torch.arange(k.shape[0], dtype=k.dtype), torch.arange(k.shape[1], dtype=k.dtype), indexing="ij"
        )
        my, mx = (k * ys).sum(), (k * xs).sum()
        cov = torch.stack([
            torch.stack([(k * (ys - my) ** 2).sum(), (k * (ys - my) * (xs - mx)).sum()]),
            torch.stack([(k * (ys - my) * (xs - mx)).sum(), (k * (xs - mx) ** 2).sum()]),
        ])  # fmt: skip
        out[name] = float(torch.linalg.eigvalsh(cov)[-1].sqrt())
    return out
