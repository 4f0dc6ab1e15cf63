"""One cell of the report (method x set x scale): run ``main.py test`` in this process, keep what the tables need.

A cell's folder ``<out>/cells/<method>/<set>_x<s>/`` holds ``run/`` (the test's ``config.yaml``,
``test_results.csv`` and SR images), ``kernels.npz`` (estimated and true kernels per image, block-centred) and,
written last, ``cell.json``: the per-image rows, seconds per image, parameters, the test command, the set's
fingerprint and each checkpoint's SHA-256 and training record. A cell whose ``cell.json`` exists with the same inputs
(command, checkpoint hashes, set fingerprint) is not run again: a killed report resumes where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import shlex
import shutil
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback

from benchmarks.report.methods import Method
from benchmarks.report.suite import SetSpec, generator_version

# The report's progress bar (a tqdm), set by the runner; the recorder shows the current image in it.
PROGRESS: dict = {"bar": None, "label": ""}
CELL_FILE = "cell.json"


class CellRecorder(Callback):
    """Per-image seconds, the current image in the report's bar, kernel estimates, the system's parameter count.

    Seconds per image: the test step's wall time less the metric updates it makes (PSNR/SSIM and their bicubic
    reference, kernel metrics, LPIPS, and ``SRSystem.estimate_in_path``, which the base test step calls only to
    measure kernels; timed by wrapping those methods on this run's system): what remains is the method's own work
    (estimation, fine-tuning, restoration) and writing the SR PNG.

    Args:
        out: The cell folder (``params.json`` at test start, ``timings.json`` and ``kernels.npz`` at test end).
    """

    def __init__(self, out: str) -> None:
        self.out = Path(out)
        self.seconds: dict[str, float] = {}
        self.kernels: dict[str, np.ndarray] = {}
        self._start = 0.0
        self._overhead = 0.0
        self._done = 0

    def on_test_start(self, trainer, pl_module) -> None:
        """Count the system's parameters (every nested network, frozen ones included); time its metric updates."""
        params = sum(p.numel() for p in pl_module.parameters())
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "params.json").write_text(json.dumps({"parameters": int(params)}))
        for name in ("update_sr_metrics", "update_kernel_metrics", "estimate_in_path"):
            setattr(pl_module, name, self._timed(getattr(pl_module, name), pl_module.device))
        if pl_module.test_lpips is not None:
            pl_module.test_lpips.update = self._timed(pl_module.test_lpips.update, pl_module.device)

    def _timed(self, fn, device: torch.device):
        def wrapper(*args, **kwargs):
            _sync(device)
            start = time.perf_counter()
            result = fn(*args, **kwargs)
            _sync(device)
            self._overhead += time.perf_counter() - start
            return result

        return wrapper

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        """Show the image in the bar; start its clock (the device is synchronised first)."""
        bar = PROGRESS["bar"]
        if bar is not None:
            total = sum(trainer.num_test_batches)
            bar.set_postfix_str(f"{PROGRESS['label']}: {batch['name'][0]} ({self._done + 1}/{total})", refresh=True)
        pl_module.last_kernel_estimates = None
        _sync(pl_module.device)
        self._overhead = 0.0
        self._start = time.perf_counter()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Stop the clock; keep the block-centred estimates and true kernels of the batch."""
        _sync(pl_module.device)
        per_image = (time.perf_counter() - self._start - self._overhead) / len(batch["name"])
        for i, name in enumerate(batch["name"]):
            self.seconds[name] = per_image
            est = pl_module.last_kernel_estimates
            if est is not None and "kernel" in batch:
                self.kernels[f"est/{name}"] = est[i].float().cpu().numpy()
                self.kernels[f"gt/{name}"] = batch["kernel"][i].float().cpu().numpy()
        self._done += len(batch["name"])

    def on_test_end(self, trainer, pl_module) -> None:
        """Write ``timings.json`` and ``kernels.npz``."""
        (self.out / "timings.json").write_text(json.dumps(self.seconds))
        np.savez_compressed(self.out / "kernels.npz", **self.kernels)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Cell:
    """Method x set x scale."""

    method: Method
    spec: SetSpec
    scale: int

    @property
    def label(self) -> str:
        """``moesr_ft / set14_kenet x2``."""
        return f"{self.method.key} / {self.spec.name} x{self.scale}"

    def folder(self, out: Path) -> Path:
        """``<out>/cells/<method>/<set>_x<s>``."""
        return out / "cells" / self.method.key / f"{self.spec.name}_x{self.scale}"


_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file (first 16 hex digits), cached by path, size and modification time."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        digest = hashlib.sha256()
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        _HASHES[key] = digest.hexdigest()[:16]
    return _HASHES[key]


def checkpoint_record(path: Path) -> dict:
    """File, SHA-256 and training budget of a checkpoint (steps, data, batch, crops, device, command).

    Read with ``weights_only=True``; the device and command come from ``blindsr_provenance`` (checkpoints written
    by ``main.py`` since this report exists), the rest from Lightning's own keys.
    """
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - the cell's test names the problem; the record keeps the file's hash
        return {"file": str(path), "sha256": file_sha256(path), "error": f"unreadable: {err}"[:300], "global_step": -1,
                "device": "unknown"}  # fmt: skip
    prov = ckpt.get("blindsr_provenance") or {}
    data = ckpt.get("datamodule_hyper_parameters") or {}
    return {
        "file": str(path), "sha256": file_sha256(path), "global_step": int(ckpt.get("global_step", -1)),
        "train_dirs": data.get("train_dirs"), "batch_size": data.get("batch_size"),
        "patch_size": data.get("patch_size"), "device": prov.get("device", "not recorded"),
        "world_size": prov.get("world_size"), "threads": prov.get("threads"), "command": prov.get("command", ""),
        "saved": prov.get("saved", ""), "config": prov.get("config", ""),
    }  # fmt: skip


def test_command(cell: Cell, folder: Path, ckpts: dict[str, Path], run_dir: Path, lpips: Path | None) -> list[str]:
    """The ``main.py test`` arguments of a cell (``run_dir``: its output folder; LPIPS when weights are given)."""
    args = ["test", *cell.method.test_args(cell.scale, ckpts), "--data.init_args.test_set", str(folder)]
    args += ["--model.init_args.output_dir", str(run_dir), "--model.init_args.save_images", "true"]
    args += [
        "--model.init_args.metric_protocol",
        "standard",
    ]  # configs may name their paper's (the tables recompute it)
    if lpips is not None:
        args += ["--model.init_args.lpips_weights", str(lpips)]
    args += ["--trainer.deterministic", "warn"]  # deterministic kernels where the device has them (CPU: always)
    return args + ["--trainer.logger", "false", "--trainer.enable_progress_bar", "false"]


def inputs_key(command: list[str], ckpt_hashes: dict[str, str], set_print: str) -> str:
    """What a cell's result depends on: the command, the bytes of its ``-c`` configs, the checkpoints' hashes and the
    set's fingerprint. Not the code: after changing code, write the report into a new ``--out`` folder.
    """  # noqa: D205
    configs = [
        file_sha256(Path(b)) for a, b in zip(command, command[1:], strict=False) if a == "-c" and Path(b).is_file()
    ]
    blob = json.dumps([command, configs, sorted(ckpt_hashes.items()), set_print])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_cell(folder: Path) -> dict | None:
    """The cell's ``cell.json``, or ``None`` (never run, killed, or unreadable)."""
    path = folder / CELL_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def prepare(cell: Cell, out: Path, test_set: Path, set_print: str, ckpts: dict[str, Path], lpips: Path | None) -> dict:
    """The cell's record before it runs: command, checkpoint records, inputs key (``status`` ``pending``)."""
    folder = cell.folder(out)
    records = {slot: checkpoint_record(p) for slot, p in ckpts.items()}
    command = test_command(cell, test_set, ckpts, folder / "run", lpips)
    hashes = {slot: r["sha256"] for slot, r in records.items()}
    return {
        "method": cell.method.key, "set": cell.spec.name, "scale": cell.scale, "status": "pending",
        "inputs_key": inputs_key(_portable(command, out, ckpts), hashes, set_print),
        "command": "python main.py " + shlex.join(command), "argv": command, "set_fingerprint": set_print,
        "checkpoints": records, "machine": machine(), "generator": generator_version(),
    }  # fmt: skip


def _portable(command: list[str], out: Path, ckpts: dict[str, Path]) -> list[str]:
    """The command with the report folder and checkpoint paths as placeholders (their contents are hashed)."""
    names = {str(p): f"<{slot}>" for slot, p in ckpts.items()}
    return [names.get(a, a.replace(str(out), "<out>")) for a in command]


def finished(cell: Cell, out: Path, stub: dict) -> dict | None:
    """The cell's earlier record if it finished with the same inputs, else ``None``."""
    done = read_cell(cell.folder(out))
    return (
        done
        if done is not None and done.get("inputs_key") == stub["inputs_key"] and done.get("status") == "ok"
        else None
    )


def execute(cell: Cell, out: Path, stub: dict) -> dict:
    """Run the cell's test in this process; write and return its record (``status`` ok or failed)."""
    from lightning_modules.core.cli import cli_main  # imports every system: only when a cell runs

    folder = cell.folder(out)
    _clear(folder)
    recorder = {"class_path": "benchmarks.report.cells.CellRecorder", "init_args": {"out": str(folder)}}
    PROGRESS["label"] = cell.label
    record = dict(stub)
    start = time.perf_counter()
    log = folder / "log.txt"
    folder.mkdir(parents=True, exist_ok=True)
    argv0 = sys.argv
    # Lightning's info lines (seed, devices, tips) go to its own handlers, not to the redirected streams.
    loggers = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in loggers]
    try:
        sys.argv = argv0[:1]  # the test's arguments are cli_main's; LightningCLI warns about any others in sys.argv
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with log.open("w") as fh, contextlib.redirect_stderr(fh), contextlib.redirect_stdout(fh):
            cli_main([*stub["argv"], "--trainer.callbacks", json.dumps([recorder])])
    except (Exception, SystemExit) as err:  # noqa: BLE001 - a failed cell is reported in the table, the rest go on
        lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
        reason = traceback.format_exception_only(type(err), err)[-1].strip()
        if isinstance(err, SystemExit) and lines:
            reason = lines[-1].strip()
        with log.open("a") as fh:
            fh.write(traceback.format_exc())
        record.update(status="failed", error=f"{reason[:500]} (log: {log})")
        _write(folder, record)
        return record
    finally:
        sys.argv = argv0
        for lg, lvl in zip(loggers, levels, strict=True):
            lg.setLevel(lvl)
    try:
        rows = _read_rows(folder / "run" / "test_results.csv")
        timings = json.loads((folder / "timings.json").read_text())
        params = json.loads((folder / "params.json").read_text())["parameters"]
    except (OSError, ValueError, KeyError) as err:
        record.update(status="failed", error=f"the test wrote no complete results ({err}); log: {log}")
        _write(folder, record)
        return record
    for row in rows:
        row["seconds"] = timings.get(row["name"])
    record.update(status="ok", rows=rows, parameters=params, wall_seconds=time.perf_counter() - start)
    _write(folder, record)
    return record


def _clear(folder: Path) -> None:
    """Remove an earlier (killed or outdated) run's outputs of the cell, so nothing stale is read back."""
    for name in (CELL_FILE, "timings.json", "params.json", "kernels.npz", "log.txt"):
        (folder / name).unlink(missing_ok=True)
    for path in folder.glob("protocol_*.json"):
        path.unlink()
    shutil.rmtree(folder / "run", ignore_errors=True)


def machine() -> str:
    """The device kind a cell ran on (``cuda: <name>`` or ``cpu: <model>``), with torch's thread count."""
    from lightning_modules.core.cli import device_name

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return f"{device_name(device)}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _read_rows(path: Path) -> list[dict]:
    """Per-image rows of ``test_results.csv`` (the ``mean`` row dropped; numbers as floats)."""
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["name"] != "mean"]
    return [{k: v if k == "name" else _number(v) for k, v in r.items()} for r in rows]


def _number(value: str) -> float | str:
    try:
        return float(value)
    except (TypeError, ValueError):
        return value


def _write(folder: Path, record: dict) -> None:
    """Write ``cell.json`` atomically (a kill never leaves half a file)."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (CELL_FILE + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(folder / CELL_FILE)
