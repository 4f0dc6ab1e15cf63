"""``python -m benchmarks.report``: every method on one suite of test sets, one protocol, one command.

Plans the cells (method x set x scale), writes the sets (``suite``), runs every cell not finished yet (``cells``)
under one progress bar, then writes ``report.md``, ``results.csv`` (a row per method), ``cells.csv`` (a row per
cell), ``report.json`` and the figures (``figures``), and with ``--wandb`` the same as a W&B table and images.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import yaml
from tqdm import tqdm

from benchmarks.report import cells as cells_mod
from benchmarks.report import tables
from benchmarks.report.cells import Cell
from benchmarks.report.methods import METHOD_KEYS, get_methods, read_checkpoint_list
from benchmarks.report.suite import SEED, SET_NAMES, fingerprint, generator_version, get_sets
from benchmarks.report.writer import write_report
from datamodules.test_sets import open_benchmark


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one (options whose help already says what None means stay as written)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        return action.help if action.default is None else super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The command line (every option explained in ``--help``)."""
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__, formatter_class=_HelpFormatter)
    p.add_argument("--checkpoints", default="checkpoints", help="checkpoint folder (the layout main.py writes: "
                   "moesr/experts_x2/last.ckpt, ...) or a YAML list of {method: KEY, scale: S, SLOT: FILE} entries "
                   "(slots not listed: below the folder 'checkpoints')")  # fmt: skip
    p.add_argument(
        "--sets", nargs="+", choices=SET_NAMES, metavar="SET", help=f"test sets (default: all): {', '.join(SET_NAMES)}"
    )
    p.add_argument("--scales", nargs="+", type=int, choices=(2, 4), default=[2, 4], help="scale factors")
    p.add_argument(
        "--methods",
        nargs="+",
        choices=METHOD_KEYS,
        metavar="METHOD",
        help=f"rows (default: all): {', '.join(METHOD_KEYS)}",
    )
    p.add_argument("--out", default="report", help="output folder (sets/, cells/, figures/, report.md, results.csv)")
    p.add_argument("--max-images", type=int, default=None, metavar="N",
                   help="first N images of every set (sorted order; for a CPU budget); default: all")  # fmt: skip
    p.add_argument("--div2krk", default=None, metavar="DIR", help="DIV2KRK-layout folder for the 'div2krk' set "
                   "(default: ../shared/data/test/DIV2KRK_sample)")  # fmt: skip
    p.add_argument("--test-hr", default=None, metavar="DIR", help="folder holding the HR sets Set5/, Set14/, BSD100/ "
                   "that the generated sets are made from (default: ../shared/data/test)")  # fmt: skip
    p.add_argument("--lpips", default="data_local/lpips", metavar="DIR",
                   help="LPIPS weights (python -m lightning_modules.metrics.lpips --fetch DIR); 'none' or a missing "
                   "folder: no LPIPS column")  # fmt: skip
    p.add_argument(
        "--wandb", action="store_true", help="also log the tables and figures to W&B (offline unless configured)"
    )
    p.add_argument("--no-run", action="store_true", help="write the report from finished cells only (run nothing)")
    p.add_argument("--train-commands", action="store_true",
                   help="print the CPU-budget commands that make the chosen rows' checkpoints, and exit")  # fmt: skip
    return p


def checkpoint_source(checkpoints: str) -> tuple[Path, dict]:
    """``--checkpoints``: a folder (the root of every default path) or a YAML list (overrides below ``checkpoints``)."""
    root = Path(checkpoints)
    if root.is_file():
        return Path("checkpoints"), read_checkpoint_list(root)
    return root, {}


def plan(args, methods, sets, has_kernels: dict, root: Path, overrides: dict) -> tuple[dict, list]:
    """``{(method, set, scale): entry}`` with status no_recipe / n/a / missing / pending, and the runnable cells.

    ``has_kernels``: ``{(set, scale): bool}``, whether the set has ground-truth kernels (rows that need them are
    n/a elsewhere); ``root``, ``overrides``: from :func:`checkpoint_source`.
    """
    grid, runnable = {}, []
    for scale in args.scales:
        for m in methods:
            ckpts = m.checkpoints(scale, root, overrides.get((m.key, scale)))
            missing = sorted(str(p) for p in ckpts.values() if not p.is_file())
            for spec in sets:
                key = (m.key, spec.name, scale)
                if scale not in m.scales:
                    grid[key] = {"status": "no_recipe"}
                elif m.kernels and not has_kernels[(spec.name, scale)]:
                    grid[key] = {"status": "n/a"}
                elif missing:
                    commands = m.train_commands(scale, root)
                    if root != Path("checkpoints"):
                        commands.append(f"(these write below checkpoints/; move the files below {root})")
                    grid[key] = {"status": "missing", "files": missing, "commands": commands}
                else:
                    grid[key] = {"status": "pending"}
                    runnable.append((Cell(m, spec, scale), ckpts))
    return grid, runnable


def write_sets(args, sets, out: Path) -> tuple[dict, list[dict]]:
    """Write (or find) every set at every scale: ``{(set, scale): folder}`` and one description per set."""
    set_dirs, set_info = {}, []
    for scale in args.scales:
        for spec in sets:
            folder = spec.ensure(out / "sets", scale, args.max_images)
            set_dirs[(spec.name, scale)] = folder
            data = open_benchmark(folder, scale)
            set_info.append({
                "set": spec.name, "scale": scale, "protocol": spec.protocol, "folder": str(folder), "seed": SEED,
                "fingerprint": fingerprint(folder), "images": len(data), "kernels": data.has_kernels,
                "hr": data.has_hr, "command": _generate_command(spec, out / "sets", scale, args.max_images),
                "generator": spec.made_by(out / "sets", scale),
            })  # fmt: skip
    return set_dirs, set_info


def main(argv: list[str] | None = None) -> int:
    """Run the report; returns the exit status (0; 2 for a bad input, with the message as the last line)."""
    args = build_parser().parse_args(argv)
    start = time.perf_counter()
    out = Path(args.out)
    try:
        methods = get_methods(args.methods)
        sets = get_sets(args.sets, args.div2krk, args.test_hr)
        if args.train_commands:
            return _print_train_commands(methods, args.scales)
        lpips = None if args.lpips == "none" or not Path(args.lpips).is_dir() else Path(args.lpips)
        if lpips is None and any(m.perceptual for m in methods):
            print(f"warning: no LPIPS weights in {args.lpips}: the perceptual rows get no LPIPS column "
                  "(python -m lightning_modules.metrics.lpips --fetch data_local/lpips)", file=sys.stderr)  # fmt: skip
        root, overrides = checkpoint_source(args.checkpoints)  # a bad list stops before any set is written
        set_dirs, set_info = write_sets(args, sets, out)
        has_kernels = {(i["set"], i["scale"]): i["kernels"] for i in set_info}
        grid, runnable = plan(args, methods, sets, has_kernels, root, overrides)
    except (ValueError, OSError, RuntimeError, yaml.YAMLError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    prints = {(i["set"], i["scale"]): i["fingerprint"] for i in set_info}
    todo, reused = [], 0
    for cell, ckpts in runnable:
        where = (cell.spec.name, cell.scale)
        stub = cells_mod.prepare(cell, out, set_dirs[where], prints[where], ckpts, lpips)
        done = cells_mod.finished(cell, out, stub)
        key = (cell.method.key, cell.spec.name, cell.scale)
        if done is not None:
            grid[key] = {"status": "ok", "record": done}
            reused += 1
        elif args.no_run:
            grid[key] = {"status": "missing", "files": [], "commands": ["(not run: --no-run)"]}
        else:
            todo.append((cell, stub))
    print(f"report: {len(runnable)} cells with checkpoints, {reused} finished earlier, {len(todo)} to run", flush=True)
    bar = tqdm(total=len(todo), desc="report", unit="cell", file=sys.stdout, dynamic_ncols=True)
    cells_mod.PROGRESS["bar"] = bar
    try:
        for cell, stub in todo:
            record = cells_mod.execute(cell, out, stub)
            entry = {"status": record["status"], "record": record}
            if record["status"] == "failed":
                entry["error"] = record["error"]
                tqdm.write(f"failed: {cell.label}: {record['error']}")
            grid[(cell.method.key, cell.spec.name, cell.scale)] = entry
            bar.update(1)
            gc.collect()
    finally:
        bar.close()
        cells_mod.PROGRESS["bar"] = None
    for (key, set_name, scale), entry in grid.items():
        if entry["status"] == "ok":
            method = next(m for m in methods if m.key == key)
            entry["means"] = _means(entry["record"], method, set_dirs[(set_name, scale)], out)
    info = {
        "generator": generator_version(), "machine": cells_mod.machine(), "max_images": args.max_images,
        "seed": SEED, "cells_run": len(todo), "cells_reused": reused, "seconds": time.perf_counter() - start,
        "argv": sys.argv[1:] if argv is None else argv,
    }  # fmt: skip
    write_report(out, methods, sets, args.scales, grid, set_info, set_dirs, info, args.wandb)
    print(f"report: {out / 'report.md'} ({len(todo)} cells run, {reused} reused, {info['seconds']:.0f} s)", flush=True)
    return 0


def _means(record: dict, method, test_set: Path, out: Path) -> dict:
    """Means of every per-image column, the paper protocol's PSNR/SSIM (from the saved SR images)."""
    means = {c: tables.mean_of(record, c) for c in (*tables.METRICS, "bicubic_psnr_y", "bicubic_ssim_y")}
    cell_dir = out / "cells" / record["method"] / f"{record['set']}_x{record['scale']}"
    paper = tables.protocol_scores(record, cell_dir, test_set, method.protocol)
    means.update(paper_psnr_y=paper.get("psnr_y"), paper_ssim_y=paper.get("ssim_y"))
    return means


def _generate_command(spec, root: Path, scale: int, limit: int | None) -> str:
    args = spec.command(root, scale, limit)
    return ("python -m datamodules.generate " + " ".join(args)) if args else f"(given folder {spec.source})"


def _print_train_commands(methods, scales) -> int:
    seen = []
    for scale in scales:
        for m in methods:
            for command in m.train_commands(scale) if scale in m.scales else []:
                if command not in seen:
                    seen.append(command)
                    print(command)
    return 0
