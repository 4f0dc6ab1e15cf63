"""Write the report: ``report.md``, ``results.csv``, ``cells.csv``, ``report.json``, ``figures/`` and the W&B run."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.report import figures, tables


def write_report(
    out: Path, methods: Sequence, sets: Sequence, scales: Sequence[int], grid: dict, set_info: list[dict],
    set_dirs: dict, info: dict, use_wandb: bool,
) -> None:  # fmt: skip
    """Every output of the report from the planned and finished cells (``grid``)."""
    out.mkdir(parents=True, exist_ok=True)
    fig_dir = out / "figures"
    fig_dir.mkdir(exist_ok=True)
    drawn = _figures(fig_dir, out, methods, sets, scales, grid, set_dirs)
    columns = {s: [(spec.name, s) for spec in sets] for s in scales}
    all_columns = [c for s in scales for c in columns[s]]
    tables.write_csv(out / "results.csv", methods, all_columns, grid)
    tables.write_cells_csv(out / "cells.csv", grid)
    md = _markdown(out, methods, scales, columns, grid, set_info, info, drawn)
    (out / "report.md").write_text(md)
    plain = {"|".join(map(str, k)): {kk: vv for kk, vv in v.items() if kk != "record"} for k, v in grid.items()}
    (out / "report.json").write_text(
        json.dumps({"info": info, "sets": set_info, "cells": plain}, indent=1, default=str)
    )
    if use_wandb:
        _wandb(out, methods, all_columns, grid, drawn, info)


def _figures(fig_dir: Path, out: Path, methods, sets, scales, grid, set_dirs) -> list[Path]:
    drawn = []
    for scale in scales:
        widths = {}
        for spec in sets:
            folder = set_dirs[(spec.name, scale)]
            path = fig_dir / f"crops_{spec.name}_x{scale}.png"
            if figures.crops_figure(path, spec.name, folder, scale, methods, grid, out):
                drawn.append(path)
            path = fig_dir / f"kernels_{spec.name}_x{scale}.png"
            if figures.kernels_figure(path, spec.name, scale, methods, grid, out):
                drawn.append(path)
            # KOALAnet's kernels include the bicubic kernel: their widths are not on the Gaussians' scale.
            per_set = tables.kernel_widths(folder, scale) if spec.protocol != "koalanet" else {}
            if per_set:
                widths[spec.name] = per_set
        path = fig_dir / f"gain_vs_width_x{scale}.png"
        if figures.gain_figure(path, scale, methods, grid, widths):
            drawn.append(path)
    return drawn


def _markdown(out: Path, methods, scales, columns, grid, set_info, info, drawn) -> str:
    lines = [
        "# blindsr results table",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `python -m benchmarks.report {' '.join(info['argv'])}` with "
        f"{info['generator']} on {info['machine']}; {info['cells_run']} cells run, {info['cells_reused']} reused "
        f"from an earlier run, {info['seconds']:.0f} s. Cells were computed with: {_versions(grid)}.",
        "Every generated set is written by `datamodules.generate` with seed "
        f"{info['seed']} (the command of each is in 'Test sets'); the DIV2KRK folder is read as given"
        + (f"; first {info['max_images']} images of each source" if info["max_images"] else "")
        + ".",
        "Standard protocol: PSNR-Y / SSIM-Y on MATLAB Y, `scale` px shaved, 8-bit SR and HR, mean of per-image values.",
        "Cells: `missing` = checkpoint absent (commands below), `n/a` = not applicable (needs ground-truth kernels), "
        "`-` = no CPU recipe at this scale, `failed` = the test stopped (error below).",
        "",
    ]
    lines += [
        "## Summary: mean PSNR-Y gain over bicubic (standard protocol; over the sets each row ran on)",
        "",
        tables.gain_table(methods, scales, grid),
        "",
    ]
    for scale in scales:
        lines += [
            f"## x{scale}, standard protocol (PSNR-Y / SSIM-Y)",
            "",
            tables.markdown_table(f"x{scale}", methods, columns[scale], grid, "psnr_y", "ssim_y"),
            "",
        ]
    for scale in scales:
        labelled = [_Labelled(m, f"{m.name} [{m.protocol}]") for m in methods]
        lines += [
            f"## x{scale}, each method's paper protocol (PSNR-Y / SSIM-Y; recomputed from the saved SR PNGs)",
            "",
            tables.markdown_table(f"x{scale}", labelled, columns[scale], grid, "paper_psnr_y", "paper_ssim_y"),
            "",
        ]
    for scale in scales:
        for metric, title, digits in (
            ("kernel_sae", "kernel SAE", 3),
            ("kernel_l2", "kernel L2 (shift-aligned, squared)", 4),
            ("kernel_psnr", "kernel PSNR (FKP)", 2),
            ("lpips", "LPIPS-Alex (lower is better)", 3),
        ):
            table = tables.markdown_table(f"x{scale}", methods, columns[scale], grid, metric, None, (digits, 0), metric)
            if table.count("\n") > 1:
                lines += [f"## x{scale}, {title}", "", table, ""]
    lines += [
        "## Cost (seconds per image: the test step less its metric updates; parameters of every network a row runs)",
        "",
        tables.cost_table(methods, scales, grid),
        "",
    ]
    lines += [
        "## Checkpoints (SHA-256 prefix, training budget; MoESR's KEN counts updates, DASR-GAN both optimizers' steps)",
        "",
        tables.provenance_table(methods, grid, out / "train_configs"),
        "",
    ]
    lines += [
        "## Test sets",
        "",
        "| set | scale | images | protocol | fingerprint | command |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {i['set']} | x{i['scale']} | {i['images']} | {i['protocol']} | {i['fingerprint']} "
              f"| `{i['command']}` |"
              for i in set_info]  # fmt: skip
    lines += ["", "## Missing and failed cells", ""]
    missing = {}
    for (key, set_name, scale), entry in grid.items():
        if entry["status"] == "missing":
            missing.setdefault((key, scale), entry)
        elif entry["status"] == "failed":
            lines.append(f"- failed: {key} / {set_name} x{scale}: {entry.get('error', '')}")
    for (key, scale), entry in missing.items():
        lines.append(f"- missing: {key} x{scale} (files: {', '.join(entry['files']) or '-'}); made by:")
        lines += [f"    - `{c}`" for c in entry["commands"]]
    if not missing and not any(e["status"] == "failed" for e in grid.values()):
        lines.append("none")
    lines += ["", "## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in drawn]
    return "\n".join(lines) + "\n"


def _versions(grid: dict) -> str:
    """The distinct code versions and machines of the finished cells (reused cells may come from other runs)."""
    records = [e["record"] for e in grid.values() if e["status"] == "ok"]
    seen = sorted({f"{r.get('generator', '?')} on {r.get('machine', '?')}" for r in records})
    return "; ".join(seen) or "-"


class _Labelled:
    """A method shown under another label (the paper-protocol table names each row's protocol)."""

    def __init__(self, method, name: str) -> None:
        self.key, self.name = method.key, name


def _wandb(out: Path, methods, columns, grid, drawn, info) -> None:
    import wandb

    from lightning_modules.core.cli import wandb_configured

    mode = "online" if wandb_configured() else "offline"
    run = wandb.init(project="blindsr", job_type="report", dir=str(out), mode=mode,
                     config=info)  # fmt: skip
    metrics = ["psnr_y", "ssim_y", "bicubic_psnr_y", "paper_psnr_y", "paper_ssim_y", "kernel_sae", "kernel_l2",
               "kernel_psnr", "lpips", "seconds"]  # fmt: skip
    header = ["method", "set", "scale", "status", *metrics, "parameters", "checkpoints", "machine", "command"]
    data = []
    for m in methods:
        for set_name, scale in columns:
            entry = grid[(m.key, set_name, scale)]
            means = entry.get("means", {})
            rec = entry.get("record") or {}
            ckpts = "; ".join(
                f"{slot}={r['sha256']} ({r['global_step']} steps, {r['device']})"
                for slot, r in (rec.get("checkpoints") or {}).items()
            )
            row = [m.name, set_name, scale, entry["status"], *(means.get(h) for h in metrics)]
            data.append([*row, rec.get("parameters"), ckpts, rec.get("machine"), rec.get("command")])
    run.log({"report/results": wandb.Table(columns=header, data=data)})
    scales = sorted({k for _, k in columns})
    summary = [[m.name, k, *tables.mean_gain(m.key, k, grid)] for m in methods for k in scales if m.key != "bicubic"]
    run.log({"report/summary": wandb.Table(columns=["method", "scale", "gain_db", "above", "sets"], data=summary)})
    run.log({f"report/{p.stem}": wandb.Image(str(p)) for p in drawn})
    run.finish()
    print(f"report: W&B run {run.id} ({'online' if mode == 'online' else 'offline, in ' + str(out / 'wandb')})")
