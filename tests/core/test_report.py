"""``benchmarks.report`` on tiny sets: cells, statuses, resume after a kill, determinism, tables, figures, errors."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from benchmarks.report import cells as cells_mod
from benchmarks.report.cli import main
from benchmarks.report.methods import METHODS, get_methods, read_checkpoint_list
from benchmarks.report.suite import fingerprint, get_sets
from lightning_modules.core.cli import PROVENANCE_KEY, cli_main
from tests.conftest import REPO

TINY = [
    "--model.init_args.num_layers=3", "--model.init_args.channels=8", "--data.init_args.batch_size=2",
    "--data.init_args.patch_size=12", "--data.init_args.val_patch_size=16", "--data.init_args.num_workers=0",
    "--data.init_args.val_batch_size=4",
]  # fmt: skip


@pytest.fixture(scope="module")
def ckpt_root(tmp_path_factory) -> Path:
    """A checkpoint folder holding only a tiny single-network x2 checkpoint (4 smoke steps)."""
    root = tmp_path_factory.mktemp("ckpts")
    callbacks = [
        {"class_path": "callbacks.checkpoint.StageCheckpoint", "init_args": {"dirpath": str(root / "baseline" / "x2")}}
    ]
    cli_main([
        "fit", "-c", str(REPO / "configs/baselines/single_net.yaml"), "-c", str(REPO / "configs/trainer/smoke.yaml"),
        *TINY, "--trainer.enable_checkpointing=true", f"--trainer.callbacks={json.dumps(callbacks)}",
        f"--trainer.default_root_dir={root / 'runs'}",
    ])  # fmt: skip
    assert (root / "baseline" / "x2" / "last.ckpt").is_file()
    return root


@pytest.fixture(scope="module")
def hr_root(tiny_hr_dir, tmp_path_factory) -> Path:
    """``Set14/`` of two tiny HR images (the source of the generated sets)."""
    root = tmp_path_factory.mktemp("hr")
    (root / "Set14").mkdir()
    for p in sorted(tiny_hr_dir.iterdir())[:2]:
        shutil.copy(p, root / "Set14" / p.name)
    return root


def report(out: Path, ckpt_root: Path, hr_root: Path, div2krk: Path, *extra: str) -> int:
    return main([
        "--checkpoints", str(ckpt_root), "--methods", "bicubic", "single_net", "gt_usrnet", "koalanet",
        "--sets", "div2krk", "set14_dasr_I", "--scales", "2", "4", "--div2krk", str(div2krk), "--test-hr", str(hr_root),
        "--max-images", "2", "--lpips", "none", "--out", str(out), *extra,
    ])  # fmt: skip


def read_results(out: Path) -> dict[str, dict]:
    with (out / "results.csv").open(newline="") as fh:
        return {r["method"]: r for r in csv.DictReader(fh)}


@pytest.fixture(scope="module")
def first(ckpt_root, hr_root, tiny_div2krk, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert report(out, ckpt_root, hr_root, tiny_div2krk) == 0
    return out


def test_the_checkpoint_records_how_it_was_trained(ckpt_root):
    prov = torch.load(ckpt_root / "baseline" / "x2" / "last.ckpt", weights_only=True)[PROVENANCE_KEY]
    assert prov["device"].startswith("cpu") and prov["global_step"] == 4 and prov["world_size"] == 1
    assert "max_steps: 4" in prov["config"]


def test_every_cell_has_a_status_and_trained_rows_beat_nothing_silently(first):
    rows = read_results(first)
    assert set(rows) == {"bicubic", "single_net", "gt_usrnet", "koalanet"}
    assert rows["bicubic"]["div2krk_x2_status"] == "ok" and rows["bicubic"]["set14_dasr_I_x4_status"] == "ok"
    assert rows["single_net"]["div2krk_x2_status"] == "ok"
    assert rows["single_net"]["div2krk_x4_status"] == "missing"  # no x4 checkpoint in the folder
    assert rows["gt_usrnet"]["set14_dasr_I_x2_status"] == "n/a"  # no ground-truth kernels
    assert rows["gt_usrnet"]["div2krk_x2_status"] == "missing"
    assert rows["koalanet"]["div2krk_x2_status"] == "no_recipe"
    # bicubic's own row equals the bicubic reference every test measures
    assert float(rows["bicubic"]["div2krk_x2_psnr_y"]) == pytest.approx(
        float(rows["single_net"]["div2krk_x2_bicubic_psnr_y"])
    )
    assert 15 < float(rows["single_net"]["div2krk_x2_psnr_y"]) < 60
    # the summary's gain: the row's PSNR-Y less bicubic's, averaged over its two ok x2 cells
    net = rows["single_net"]
    gains = [float(net[f"{s}_x2_psnr_y"]) - float(net[f"{s}_x2_bicubic_psnr_y"]) for s in ("div2krk", "set14_dasr_I")]
    gain, above = sum(gains) / 2, sum(g > 0 for g in gains)
    assert float(net["mean_gain_x2"]) == pytest.approx(gain, abs=1e-4)
    assert net["sets_above_bicubic_x2"] == f"{above} of 2"
    assert rows["single_net"]["mean_gain_x4"] == ""  # its x4 cells are missing: no gain, not zero
    assert float(rows["bicubic"]["mean_gain_x2"]) == pytest.approx(0, abs=1e-6)
    md = (first / "report.md").read_text()
    assert f"| Single network (MoESR's residual net, all kernels) | {gain:+.2f} | {above} of 2 | - | - |" in md
    assert "missing: single_net x4" in md and "configs/baselines/cpu/single_net.yaml" in md
    assert "set14_dasr_I | x4 | 2 | dasr" in md and "--protocol dasr" in md and "--seed 0" in md


def test_the_paper_protocol_is_recomputed_from_the_saved_images(first, tiny_div2krk):
    record = json.loads((first / "cells" / "single_net" / "div2krk_x2" / cells_mod.CELL_FILE).read_text())
    rows = read_results(first)["single_net"]
    from benchmarks.report.tables import protocol_scores

    standard = protocol_scores(
        record, first / "cells" / "single_net" / "div2krk_x2", first / "sets" / "div2krk", "standard"
    )
    assert standard["psnr_y"] == pytest.approx(float(rows["div2krk_x2_psnr_y"]), abs=1e-4)
    koala = protocol_scores(
        record, first / "cells" / "single_net" / "div2krk_x2", first / "sets" / "div2krk", "koalanet"
    )
    assert koala["psnr_y"] != pytest.approx(standard["psnr_y"], abs=1e-3)  # no shave, rounded Y: another number


def test_record_keeps_hashes_budget_and_command(first, ckpt_root):
    record = json.loads((first / "cells" / "single_net" / "div2krk_x2" / cells_mod.CELL_FILE).read_text())
    ckpt = record["checkpoints"]["net"]
    assert ckpt["global_step"] == 4 and ckpt["batch_size"] == 2 and ckpt["device"].startswith("cpu")
    assert len(ckpt["sha256"]) == 16 and record["command"].startswith(
        "python main.py test -c configs/baselines/single_net.yaml"
    )
    assert all(r["seconds"] > 0 for r in record["rows"]) and record["parameters"] > 0
    assert (first / "figures" / "crops_div2krk_x2.png").is_file()
    assert (first / "figures" / "gain_vs_width_x2.png").is_file()


def test_a_second_run_resumes_and_reruns_only_missing_cells(first, ckpt_root, hr_root, tiny_div2krk, capsys):
    before = read_results(first)
    (first / "cells" / "bicubic" / "div2krk_x4" / cells_mod.CELL_FILE).unlink()  # as if killed during that cell
    assert report(first, ckpt_root, hr_root, tiny_div2krk) == 0
    assert "1 to run" in capsys.readouterr().out
    assert json.loads((first / "report.json").read_text())["info"]["cells_run"] == 1
    after = read_results(first)
    assert before["bicubic"]["div2krk_x4_psnr_y"] == after["bicubic"]["div2krk_x4_psnr_y"]


def test_the_same_cells_from_scratch_give_the_same_numbers(first, ckpt_root, hr_root, tiny_div2krk, tmp_path):
    assert report(tmp_path, ckpt_root, hr_root, tiny_div2krk) == 0
    a, b = read_results(first), read_results(tmp_path)
    for method in a:
        for column in a[method]:
            if column.endswith(("psnr_y", "ssim_y", "status")):
                assert a[method][column] == b[method][column], (method, column)
    assert fingerprint(first / "sets" / "set14_dasr_x2") == fingerprint(tmp_path / "sets" / "set14_dasr_x2")


def test_a_changed_checkpoint_reruns_its_cells(first, ckpt_root, hr_root, tiny_div2krk, tmp_path):
    root = tmp_path / "ckpts"
    shutil.copytree(ckpt_root / "baseline", root / "baseline")
    ckpt = torch.load(root / "baseline" / "x2" / "last.ckpt", weights_only=True)
    ckpt["global_step"] += 1
    torch.save(ckpt, root / "baseline" / "x2" / "last.ckpt")
    out = tmp_path / "out"
    shutil.copytree(first, out)
    assert report(out, root, hr_root, tiny_div2krk) == 0
    info = json.loads((out / "report.json").read_text())["info"]
    assert info["cells_run"] == 2  # the single network's two x2 cells; every other cell reused


def test_a_broken_checkpoint_is_a_failed_cell_naming_the_file(ckpt_root, hr_root, tiny_div2krk, tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump([{"method": "single_net", "scale": 2, "net": str(bad)}]))
    out = tmp_path / "out"
    assert main(["--checkpoints", str(listing), "--methods", "single_net", "--sets", "div2krk", "--scales", "2",
                 "--div2krk", str(tiny_div2krk), "--lpips", "none", "--out", str(out)]) == 0  # fmt: skip
    md = (out / "report.md").read_text()
    assert "failed: single_net / div2krk x2" in md and "bad.ckpt" in md


def test_bad_inputs_name_the_value(tmp_path, capsys):
    listing = tmp_path / "list.yaml"
    listing.write_text(yaml.safe_dump([{"method": "moesr_ft", "scale": 2, "expert": "x.ckpt"}]))
    with pytest.raises(ValueError, match="moesr_ft has no slot expert"):
        read_checkpoint_list(listing)
    assert main(["--checkpoints", str(listing), "--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error:")
    with pytest.raises(ValueError, match="unknown method"):
        get_methods(["nope"])


def test_every_method_names_existing_configs_and_a_recipe_for_each_checkpoint():
    for m in METHODS:
        for config in m.configs:
            assert (REPO / config).is_file(), (m.key, config)
        for scale in m.scales:
            outputs = {t.format(scale=scale) for t in m.train}
            assert all(rel.format(scale=scale) in outputs for rel in m.slots.values()), (m.key, scale)
            args = m.test_args(scale, m.checkpoints(scale, Path("ck")))
            assert "{" not in " ".join(args), (m.key, args)


def test_div2krk_subset_links_the_first_images(tiny_div2krk, tmp_path):
    spec = get_sets(["div2krk"], str(tiny_div2krk))[0]
    folder = spec.ensure(tmp_path, 2, 2)
    assert sorted(p.name for p in (folder / "lr_x2").iterdir()) == ["im_1.png", "im_2.png"]
    assert sorted(p.name for p in (folder / "gt_k_x4").iterdir()) == ["kernel_1.mat", "kernel_2.mat"]
    before = fingerprint(folder)
    Image.new("RGB", (4, 4)).save(folder / "gt" / "im_9.png")
    assert fingerprint(folder) != before
