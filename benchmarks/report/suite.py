"""The report's test sets: one folder given (DIV2KRK), the rest written by ``datamodules.generate`` with fixed seeds.

Every set is made once per report folder (``<out>/sets/``) by the same command a reader can run to regenerate it
(:meth:`SetSpec.command`); the report states the command, the seed, the generator's version (``blindsr`` version
and git commit) and a SHA-256 fingerprint of the files, so anyone can check a regenerated set is the same.
``--max-images N`` takes the first N images of each source folder in sorted order (``datamodules.generate
--limit``; the DIV2KRK folder as links to its first N images).
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import subprocess
from dataclasses import dataclass, replace
from importlib import metadata
from pathlib import Path

from datamodules.generate import main as generate_main
from datamodules.images import natural_key

REPO = Path(__file__).resolve().parents[2]
SHARED_TEST = "../shared/data/test"
DEFAULT_DIV2KRK = f"{SHARED_TEST}/DIV2KRK_sample"
SEED = 0
# Files that make up a set (README.txt holds a time stamp and the command, not data).
_DATA_SUFFIXES = {".png", ".mat", ".npy", ".json"}


@dataclass(frozen=True)
class SetSpec:
    """One test set of the suite.

    Attributes:
        name: The column name (``set14_kenet``).
        protocol: ``datamodules.generate`` protocol, or ``"folder"`` for a set read as given (DIV2KRK).
        source: HR folder (generated sets) or the set's folder (``"folder"``).
        level: DASR level (``I``, ``II``, ``III``) of a ``dasr`` set.
        field: Kernel field of a ``spatially_variant`` set.
    """

    name: str
    protocol: str
    source: str
    level: str | None = None
    field: str | None = None

    def folder(self, root: Path, scale: int) -> Path:
        """The folder that ``main.py test --data.init_args.test_set`` reads at ``scale``."""
        if self.protocol == "dasr":
            return self._gen_dir(root, scale) / f"level_{self.level}"
        return self._gen_dir(root, scale)

    def _gen_dir(self, root: Path, scale: int) -> Path:
        """The folder one generation writes (DASR's three levels share one; per-scale protocols get one per scale)."""
        base = self.name.rsplit("_", 1)[0] if self.protocol == "dasr" else self.name
        return root / (f"{base}_x{scale}" if self.protocol in ("dasr", "spatially_variant") else base)

    def command(self, root: Path, scale: int, limit: int | None) -> list[str]:
        """The ``python -m datamodules.generate`` arguments that write this set (``[]`` for a given folder)."""
        if self.protocol == "folder":
            return []
        args = ["--protocol", self.protocol, "--hr", self.source, "--out", str(self._gen_dir(root, scale))]
        args += ["--seed", str(SEED)] + (["--limit", str(limit)] if limit else [])
        if self.protocol in ("dasr", "spatially_variant"):
            args += ["--scale", str(scale)]
        if self.field:
            args += ["--field", self.field]
        return args

    def marker(self, root: Path, scale: int) -> Path:
        """The file that says the set is complete, and how it was made (beside the set's folder, never inside)."""
        gen_dir = self._gen_dir(root, scale)
        return gen_dir.parent / f".{gen_dir.name}.json"

    def ensure(self, root: Path, scale: int, limit: int | None) -> Path:
        """Write the set unless it is complete with the same source, limit and command; returns its folder.

        The marker (:meth:`marker`, written last) records the command and the generator's version.
        """
        folder = self.folder(root, scale)
        gen_dir = self._gen_dir(root, scale)
        made = {"source": str(self.source), "limit": limit, "command": self.command(root, scale, limit)}
        marker = self.marker(root, scale)
        if marker.is_file() and {k: v for k, v in json.loads(marker.read_text()).items() if k in made} == made:
            return folder
        marker.unlink(missing_ok=True)
        if self.protocol == "folder":
            _link_subset(Path(self.source), gen_dir, limit)
        else:
            status = generate_main([*self.command(root, scale, limit), "--overwrite"])
            if status:
                raise RuntimeError(
                    f"datamodules.generate failed for set {self.name}: {shlex.join(self.command(root, scale, limit))}"
                )
        marker.write_text(json.dumps({**made, "generator": generator_version()}))
        return folder

    def made_by(self, root: Path, scale: int) -> str:
        """The generator version recorded when the set was written."""
        return json.loads(self.marker(root, scale).read_text()).get("generator", "unknown")


def _link_subset(source: Path, dest: Path, limit: int | None) -> None:
    """``dest`` = ``source`` (a DIV2KRK-layout folder), or links to its first ``limit`` images, kernels and HR."""
    if not (source / "lr_x2").is_dir() and not (source / "lr_x4").is_dir():
        raise FileNotFoundError(
            f"{source} is not a DIV2KRK-layout folder (lr_x2/ or lr_x4/ missing): pass --div2krk DIR"
        )
    if dest.is_symlink() or dest.exists():
        _remove(dest)
    if not limit:
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.symlink_to(source.resolve(), target_is_directory=True)
        return
    lr_dir = next(d for d in (source / "lr_x2", source / "lr_x4") if d.is_dir())
    numbers = sorted({_number(p.stem) for p in lr_dir.iterdir()}, key=natural_key)[:limit]
    for sub in sorted(p for p in source.iterdir() if p.is_dir()):
        (dest / sub.name).mkdir(parents=True, exist_ok=True)
        for f in sub.iterdir():
            if _number(f.stem) in numbers:
                (dest / sub.name / f.name).symlink_to(f.resolve())


def _number(stem: str) -> str:
    """The image number of a DIV2KRK file name (``im_2``, ``img_2_gt``, ``kernel_2`` -> ``"2"``)."""
    found = re.search(r"\d+", stem)
    return found.group(0) if found else stem


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    for child in path.iterdir():
        _remove(child)
    path.rmdir()


def fingerprint(folder: Path) -> str:
    """SHA-256 (first 16 hex digits) over the set's data files (relative path and bytes, sorted)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.suffix in _DATA_SUFFIXES):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.resolve().read_bytes())
    return digest.hexdigest()[:16]


def generator_version() -> str:
    """``blindsr <version> (git <commit>[+changes])``: what generated the sets and ran the tests."""
    version = metadata.version("blindsr") if _installed() else "unknown"
    try:
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        commit = commit.stdout.strip()
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        dirty = dirty.stdout
        return f"blindsr {version} (git {commit}{'+changes' if dirty.strip() else ''})"
    except (OSError, subprocess.CalledProcessError):
        return f"blindsr {version}"


def _installed() -> bool:
    try:
        metadata.version("blindsr")
    except metadata.PackageNotFoundError:
        return False
    return True


def _triple(name: str, protocol: str) -> list[SetSpec]:
    return [SetSpec(f"{s.lower()}_{name}", protocol, f"{SHARED_TEST}/{s}") for s in ("Set5", "Set14", "BSD100")]


SETS: tuple[SetSpec, ...] = (
    SetSpec("div2krk", "folder", DEFAULT_DIV2KRK),
    *_triple("rk", "div2krk"),
    *_triple("kenet", "kenet"),
    *_triple("koala", "koalanet"),
    *(SetSpec(f"set14_dasr_{lv}", "dasr", f"{SHARED_TEST}/Set14", level=lv) for lv in ("I", "II", "III")),
    SetSpec("set14_sv", "spatially_variant", f"{SHARED_TEST}/Set14", field="defocus"),
)
SET_NAMES = tuple(s.name for s in SETS)


def get_sets(names: list[str] | None, div2krk: str | None = None, hr_root: str | None = None) -> list[SetSpec]:
    """The sets named (all when ``None``), in suite order.

    ``div2krk`` replaces the DIV2KRK folder; ``hr_root`` the folder holding ``Set5/``, ``Set14/``, ``BSD100/``.
    """
    chosen = list(SETS)
    if names:
        unknown = sorted(set(names) - set(SET_NAMES))
        if unknown:
            raise ValueError(f"unknown set(s) {', '.join(unknown)}; choose from {', '.join(SET_NAMES)}")
        chosen = [s for s in SETS if s.name in names]
    if div2krk:
        chosen = [replace(s, source=div2krk) if s.protocol == "folder" else s for s in chosen]
    if hr_root:
        chosen = [
            replace(s, source=s.source.replace(SHARED_TEST, hr_root, 1)) if s.protocol != "folder" else s
            for s in chosen
        ]
    return chosen
