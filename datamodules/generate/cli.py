"""``python -m datamodules.generate``: one command line for every test-set writer, chosen by ``--protocol``.

``--hr``, ``--out``, ``--limit`` / ``--max-images`` and ``--overwrite`` are shared; the other options belong to some
protocols (``DEFAULTS``) and are refused with the others (their defaults are applied after parsing, so a given option
is detectable).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from datamodules.degradation.spatially_variant import FIELDS
from datamodules.generate.dasr import write_dasr_sets
from datamodules.generate.div2krk import generate
from datamodules.generate.kenet import generate_kenet
from datamodules.generate.koalanet import generate_koalanet
from datamodules.generate.mixture import write_mixture_set
from datamodules.generate.spatially_variant import generate_spatially_variant
from datamodules.io import ImageReadError

PROG = "python -m datamodules.generate"
DIV2KRK_DEFAULTS = {
    "scales": [2, 4], "seed": 0, "kernel_size": 11, "lambda_min": 0.6, "lambda_max": 5.0, "max_kernel_noise": 0.25,
    "device": "cpu",
}  # fmt: skip
MIXTURE_DEFAULTS = {
    "scale": 2, "kernels": "unseen", "split_seed": 0, "split_file": "checkpoints/mixture/kernel_split.json",
    "kernels_per_image": None,
}  # fmt: skip
KENET_DEFAULTS = {"scales": [2, 4], "seed": 0, "sigma_min": 0.2, "sigma_max": 4.0, "device": "cpu"}
DASR_DEFAULTS = {"scale": 4, "seed": 0, "levels": ["I", "II", "III"]}
KOALANET_DEFAULTS = {"scales": [2, 4], "seed": 0, "sigma_min": 0.2, "sigma_max": 4.0, "device": "cpu"}
SV_DEFAULTS = {"scale": 4, "seed": 0, "field": "defocus", "sigma_min": 0.2, "sigma_max": 4.0, "device": "cpu"}
DEFAULTS = {
    "div2krk": DIV2KRK_DEFAULTS, "kenet": KENET_DEFAULTS, "mixture": MIXTURE_DEFAULTS, "dasr": DASR_DEFAULTS,
    "koalanet": KOALANET_DEFAULTS, "spatially_variant": SV_DEFAULTS,
}  # fmt: skip

EPILOG = """\
protocol div2krk (the default; DIV2KRK, KernelGAN NeurIPS 2019; MoESR's BSD100RK / Urban100RK):
  image N (sorted order, numbered from 1) draws one x2 kernel from a torch.Generator seeded
  from (seed, N): an anisotropic Gaussian with variances lambda1, lambda2 ~ U(lambda-min,
  lambda-max), theta ~ U(0, pi), multiplicative noise U(-n, n) per pixel with n ~
  U(0, max-kernel-noise), centred on the block centre. x4 = the same x2 kernel applied twice
  (3k-2 = 31 px for k = 11). HR is cropped top-left to a multiple of lcm(scales); LR = HR
  correlated with the kernel (symmetric border: scipy's "reflect"), every s-th pixel from 0, rounded to 8 bit.

  kernel files (read them like DIV2KRK's): gt_k_x{s}/kernel_N.mat holds
    Kernel              the kernel centred on the MIDDLE pixel (shifted by -0.5*(s-1) px), the
                        way the DIV2KRK release stores its kernels, although its LR images were
                        made with the block-centred kernel; datamodules.degradation.kernels.
                        div2krk_kernel_to_block_centre shifts it back (up to a slight blur)
    KernelBlockCentred  the exact kernel that made lr_x{s}/im_N.png

  output: OUT/gt/im_N.png  OUT/lr_x{s}/im_N.png  OUT/gt_k_x{s}/kernel_N.mat  OUT/README.txt
  The same arguments give byte-identical files; a different seed gives different kernels.

protocol kenet (KENet, Cao et al., Sec. 3.1, after FKP's generator):
  the div2krk layout, files, seeding and LR, with KENet's kernels: image N draws standard
  deviations sigma1, sigma2 ~ U(sigma-min, sigma-max) independently and theta ~ U(0, pi) once;
  that draw gives an 11x11 x2 kernel and a 21x21 x4 kernel (the same Gaussian, not x2 applied
  twice), centre of mass moved onto the block centre as FKP's kernel_shift does, no kernel
  noise (datamodules.degradation.samplers.
  KENetKernelSampler). Kernel files hold Kernel and KernelBlockCentred as for div2krk.

protocol mixture (variational mixture of networks, Wang et al., Pattern Recognition 2020):
  every HR image (directly in the one --hr folder, sorted) is cropped top-left to a multiple
  of --scale and degraded by every kernel of the --kernels group: 11x11 Gaussians centred on
  the middle pixel (datamodules.degradation.kernels.mixture: 52 distinct kernels, split into
  29 seen and 23 unseen by --split-seed, or as stored in --split-file if that file exists),
  correlated with a symmetric border, every s-th pixel from s//2 (the official code's PIL
  NEAREST), rounded to 8 bit. --kernels-per-image n gives image i only the kernels at
  positions (i*n + j) mod K, j < n, of the group, so consecutive images cycle through all K.

  output ("paired" layout, read by datamodules.test_sets.open_benchmark): OUT/HR_full/<stem>.png,
  OUT/HR/<stem>_k<id>.png (hard links), OUT/LR/<stem>_k<id>.png, OUT/kernels/<stem>_k<id>.mat
  ('Kernel', as applied) and OUT/split.json; <id> is the kernel's global id (0..51).

protocol dasr (DASR, Liang et al., ECCV 2022: the Level-I / II / III sets of its Table 1):
  every HR image is cropped top-left to a multiple of --scale and degraded at each of --levels
  (I = weak one-stage, II = standard one-stage, III = severe two-stage; official ranges,
  datamodules.degradation.pipelines.dasr) on the CPU; image N of level L draws every parameter
  from a torch.Generator seeded from (seed, L, N), so --limit gives the same images as a full run.

  output (one "paired" set per level, read by datamodules.test_sets.open_benchmark(OUT/level_X)):
  OUT/level_X/HR/im_N.png, OUT/level_X/LR/im_N.png, OUT/level_X/params.json (named parameters and
  the 33-number DASR vector per image), OUT/README.txt; X = I, II, III.

protocol koalanet (KOALAnet, Kim et al., CVPR 2021: its random anisotropic Gaussian test sets):
  the div2krk layout, files, seeding (a seed per image) and LR, with KOALAnet's kernels: image N
  draws standard deviations sigma_x, sigma_y ~ U(sigma-min, sigma-max) and theta ~ U(0, pi/2)
  once; kernel = 15x15 Gaussian convolved with the 20x20 non-antialiased bicubic kernel, the
  same at x2 and x4; LR = KOALAnet's degradation (symmetric padding by (20-s)/2, stride-s
  correlation). KernelBlockCentred = that kernel zero-padded by s-1 rows/columns at the top and
  left (21x21 x2, 23x23 x4: the same LR decimated from pixel 0; datamodules.degradation.
  koala_sampler.block_centre_to_koala crops it back to the native 20x20 kernel).

protocol spatially_variant (beyond the papers: a kernel that varies smoothly across the image):
  image N draws a field of KOALAnet kernel parameters (sigma_x, sigma_y, theta per LR pixel)
  from a torch.Generator seeded from (seed, N): --field defocus (width growing with the distance
  from a random in-focus point, nearly isotropic) or two_region (a sharp and a defocused region
  split by a smooth random boundary); each LR pixel = HR correlated with its own 20x20 kernel
  (float64), rounded to 8 bit. One --scale (2 or 4) per set.

  output: OUT/gt/im_N.png  OUT/lr_x{s}/im_N.png  OUT/field_x{s}/field_N.npy ((H, W, 3) float32:
  sigma_x, sigma_y, theta on the LR grid)  OUT/field_x{s}/width_N.png (picture of the width)
  OUT/kernels.json (kernel convention)  OUT/README.txt; read by datamodules.sv_sets.
  SpatiallyVariantDataset (kernels rebuilt from the field), or open_benchmark for SR metrics.

examples:
  python -m datamodules.generate --hr data/test/BSD100 --out data/test/BSD100RK --scales 2 4 --seed 0
  python -m datamodules.generate --protocol kenet --hr data/test/Set5 --out data_local/kenet/Set5 --scales 2 4
  python -m datamodules.generate --protocol mixture --hr data/test/Set5 --out data_local/mixture/Set5_unseen_x2 \\
      --scale 2 --kernels unseen
  python -m datamodules.generate --protocol dasr --hr data/test/Set5 --out data_local/dasr/Set5_x4 --scale 4
  python -m datamodules.generate --protocol koalanet --hr data/test/Set5 --out data_local/koalanet/Set5 --scales 2 4
  python -m datamodules.generate --protocol spatially_variant --hr data/test/Set14 \\
      --out data_local/sv/Set14_defocus_x4 --scale 4 --field defocus
"""


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface of ``python -m datamodules.generate`` (every protocol)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write a test set from a folder of HR images. --protocol div2krk (default): random anisotropic\n"
        "Gaussian kernels, x2 and x4, in DIV2KRK's layout (read by datamodules.test_sets.DIV2KRKDataset).\n"
        "--protocol kenet: KENet's anisotropic Gaussians (11x11 x2, 21x21 x4), same layout.\n"
        "--protocol mixture: every image x every seen or unseen kernel of Wang et al. 2020, paired layout.\n"
        "--protocol dasr: DASR's Level-I / II / III sets (three-level degradation space), paired layout.\n"
        "--protocol koalanet: KOALAnet's random anisotropic Gaussian sets (x2, x4), DIV2KRK layout.\n"
        "--protocol spatially_variant: a kernel field varying across each image (defocus, two_region).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d, k, m, r, v = DIV2KRK_DEFAULTS, KENET_DEFAULTS, MIXTURE_DEFAULTS, DASR_DEFAULTS, SV_DEFAULTS
    common = parser.add_argument_group("every protocol")
    common.add_argument(
        "--protocol", choices=sorted(DEFAULTS), default="div2krk", help="which test set to write (default: div2krk)"
    )
    common.add_argument(
        "--hr", required=True, nargs="+", metavar="DIR",
        help="div2krk, kenet, dasr, koalanet, spatially_variant: HR image folder(s) (searched recursively), image "
        "files, or 'builtin'; "
        "mixture: one folder of HR images (not searched recursively)",
    )  # fmt: skip
    common.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    common.add_argument(
        "--limit", "--max-images", type=int, default=None, metavar="N",
        help="only the first N images in sorted order (the same files as in a full run) (default: all)",
    )  # fmt: skip
    common.add_argument(
        "--overwrite", action="store_true",
        help="replace the files of an earlier run in --out (only those; without it, such a folder is refused)",
    )  # fmt: skip
    both = parser.add_argument_group("--protocol div2krk, kenet and koalanet (--device: also spatially_variant)")
    both.add_argument(
        "--scales",
        type=int,
        nargs="+",
        choices=[2, 4],
        help=f"scale factors to write (default: {' '.join(map(str, d['scales']))})",
    )
    both.add_argument(
        "--device",
        help=f"device for blurring, e.g. cuda (kernels are always drawn on the CPU) (default: {d['device']})",
    )
    seeded = parser.add_argument_group("--protocol div2krk, kenet, dasr, koalanet and spatially_variant")
    seeded.add_argument("--seed", type=int, help=f"non-negative base seed (default: {d['seed']})")
    rk = parser.add_argument_group("--protocol div2krk only")
    rk.add_argument(
        "--kernel-size", type=int,
        help=f"odd side of the x2 kernel; x4 kernels are 3k-2 (default: {d['kernel_size']}, as DIV2KRK)",
    )  # fmt: skip
    rk.add_argument(
        "--lambda-min", type=float,
        help=f"smallest covariance eigenvalue (variance, px^2) (default: {d['lambda_min']})",
    )  # fmt: skip
    rk.add_argument(
        "--lambda-max",
        type=float,
        help=f"largest covariance eigenvalue (variance, px^2) (default: {d['lambda_max']:g})",
    )
    rk.add_argument(
        "--max-kernel-noise", type=float,
        help=f"upper bound of the multiplicative kernel-noise level (default: {d['max_kernel_noise']})",
    )  # fmt: skip
    ke = parser.add_argument_group("--protocol kenet, koalanet and spatially_variant")
    ke.add_argument(
        "--sigma-min", type=float, help=f"smallest kernel standard deviation, HR px (default: {k['sigma_min']})"
    )
    ke.add_argument(
        "--sigma-max", type=float, help=f"largest kernel standard deviation, HR px (default: {k['sigma_max']})"
    )
    scaled = parser.add_argument_group("--protocol mixture, dasr and spatially_variant")
    scaled.add_argument(
        "--scale", type=int,
        help=f"downscaling factor (default: mixture {m['scale']}, dasr {r['scale']}, spatially_variant {v['scale']})",
    )  # fmt: skip
    mx = parser.add_argument_group("--protocol mixture only")
    mx.add_argument(
        "--kernels", choices=["seen", "unseen", "all"],
        help=f"kernel group: the 29 seen (training), the 23 unseen, or all 52 (default: {m['kernels']})",
    )  # fmt: skip
    mx.add_argument("--split-seed", type=int, help=f"seed of the seen / unseen split (default: {m['split_seed']})")
    mx.add_argument(
        "--split-file",
        help="JSON split to use if the file exists (checked against --split-seed; the E-Net pre-training writes it) "
        f"(default: {m['split_file']})",
    )
    mx.add_argument(
        "--kernels-per-image", type=int, metavar="N",
        help="only this many kernels per image, cycling through the group over the images (default: all)",
    )  # fmt: skip
    da = parser.add_argument_group("--protocol dasr only")
    da.add_argument(
        "--levels", nargs="+", choices=["I", "II", "III"],
        help=f"degradation levels to write, one folder each (default: {' '.join(r['levels'])})",
    )  # fmt: skip
    sv = parser.add_argument_group("--protocol spatially_variant only")
    sv.add_argument(
        "--field", choices=sorted(FIELDS),
        help=f"kernel field: defocus around a random point, or two regions (default: {v['field']})",
    )  # fmt: skip
    return parser


def _resolve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Refuse the other protocols' options, then fill this protocol's defaults."""
    owners: dict[str, list[str]] = {}  # option -> the protocols that take it
    for protocol, defaults in DEFAULTS.items():
        for key in defaults:
            owners.setdefault(key, []).append(protocol)
    refused: dict[str, list[str]] = {}  # "div2krk or kenet" -> options given
    for key, protocols in owners.items():
        if args.protocol not in protocols and getattr(args, key) is not None:
            refused.setdefault(" or ".join(protocols), []).append(f"--{key.replace('_', '-')}")
    for protocols, given in refused.items():
        parser.error(f"{', '.join(given)}: only with --protocol {protocols}")
    for key, value in DEFAULTS[args.protocol].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.protocol == "mixture" and len(args.hr) != 1:
        parser.error(f"--protocol mixture takes one --hr folder, got {len(args.hr)}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (0, or 2 with a message on stderr for a bad input)."""
    parser = build_parser()
    args = _resolve(parser, parser.parse_args(argv))
    raw = list(sys.argv[1:] if argv is None else argv)
    command = f"{PROG} " + shlex.join(raw)
    try:
        if args.protocol == "mixture":
            n = write_mixture_set(
                args.hr[0], args.out, args.scale, args.kernels, args.split_seed, args.split_file,
                kernels_per_image=args.kernels_per_image, max_images=args.limit, overwrite=args.overwrite,
            )  # fmt: skip
            print(f"wrote {n} LR images to {args.out}")
        elif args.protocol == "dasr":
            write_dasr_sets(args.hr, args.out, args.scale, args.seed, args.levels, args.limit, args.overwrite, command)
        elif args.protocol == "koalanet":
            generate_koalanet(
                args.hr, args.out, args.scales, args.seed, (args.sigma_min, args.sigma_max), args.limit, args.device,
                args.overwrite, command,
            )  # fmt: skip
        elif args.protocol == "spatially_variant":
            generate_spatially_variant(
                args.hr, args.out, args.scale, args.field, args.seed, (args.sigma_min, args.sigma_max), args.limit,
                args.device, args.overwrite, command,
            )  # fmt: skip
        elif args.protocol == "kenet":
            generate_kenet(
                args.hr, args.out, args.scales, args.seed, (args.sigma_min, args.sigma_max), args.limit, args.device,
                args.overwrite, command,
            )  # fmt: skip
        else:
            generate(
                args.hr, args.out, args.scales, args.seed, args.kernel_size, (args.lambda_min, args.lambda_max),
                args.max_kernel_noise, args.limit, args.device, args.overwrite, command,
            )  # fmt: skip
    except (FileNotFoundError, FileExistsError, ImageReadError, ValueError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr, flush=True)
        return 2
    return 0
