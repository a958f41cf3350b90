#!/usr/bin/env python
"""dcmtk reference renders for windowed / non-first-frame renderings (``dicomsvc.imaging.renderings``).

Run from the repository root with the project venv:

    .venv/bin/python tests/refs/make_window_refs.py

Requirements (Debian): ``apt-get install dcmtk``.

Every case in ``CASES`` renders one frame of one of pydicom's *bundled* test
files (nothing is downloaded) with

    dcmj2pnm --write-png --no-overlays --frame N --set-window C W in.dcm out.png

re-encodes dcmtk's PNG losslessly with Pillow (``optimize=True,
compress_level=9``, no text/time chunks) into ``tests/refs/window/<name>.png``
and describes it in ``tests/refs/window/manifest.json``. The tests compare our
renders with these within ±1 grey level.

A case may ``derive`` its input from the bundled file: the listed attributes are
set (by keyword) on a copy saved in a scratch directory, e.g. MR_small as
MONOCHROME1. The tests apply the same ``derive`` before rendering, so both sides
see the same file.

dcmtk facts these references rely on (checked with synthetic files):
* ``--set-window`` replaces the file's Window Center/Width, VOI LUT Sequence and
  min–max; the modality LUT still comes first and MONOCHROME1 is still inverted
  afterwards;
* it keeps the file's VOI LUT Function (a file saying SIGMOID gets a sigmoid
  window); ``--linear-function`` / ``--sigmoid-function`` would override that;
* colour images ignore it.

The script is deterministic: two runs write byte-identical files; the
manifest holds no temporary paths (``$PYDICOM_DATA``, ``$TMP`` stand in).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pydicom
from PIL import Image
from pydicom.data import get_testdata_file

OUT = Path(__file__).resolve().parent / "window"

# name (png stem), bundled file, 1-based frame, (center, width), attributes to change first, why
CASES: list[dict] = [
    {"name": "CT_small_40_400", "file": "CT_small.dcm", "frame": 1, "window": [40, 400],
     "why": "signed 16-bit CT, rescale intercept -1024, no window in the file (min-max otherwise): soft tissue"},
    {"name": "CT_small_lung", "file": "CT_small.dcm", "frame": 1, "window": [-600, 1500],
     "why": "negative center, wide window"},
    {"name": "CT_small_fractional", "file": "CT_small.dcm", "frame": 1, "window": [40.5, 255.5],
     "why": "fractional center and width"},
    {"name": "CT_small_width1", "file": "CT_small.dcm", "frame": 1, "window": [100, 1],
     "why": "width 1: a threshold at center - 0.5"},
    {"name": "MR_small_300_600", "file": "MR_small.dcm", "frame": 1, "window": [300, 600],
     "why": "signed 16-bit MR whose own window (600/1600) is replaced"},
    {"name": "MR_small_bigendian", "file": "MR_small_bigendian.dcm", "frame": 1, "window": [1000, 2000],
     "why": "signed 16-bit, explicit VR big endian"},
    {"name": "MR_small_RLE", "file": "MR_small_RLE.dcm", "frame": 1, "window": [300, 600],
     "why": "signed 16-bit, RLE"},
    {"name": "examples_overlay", "file": "examples_overlay.dcm", "frame": 1, "window": [500, 1000],
     "why": "unsigned 12-bit with two windows of its own"},
    {"name": "image_dfl", "file": "image_dfl.dcm", "frame": 1, "window": [128, 64],
     "why": "8-bit, deflated transfer syntax"},
    {"name": "liver_1frame", "file": "liver_1frame.dcm", "frame": 1, "window": [1, 1],
     "why": "1-bit segmentation, width 1"},
    {"name": "rtdose_f1", "file": "rtdose.dcm", "frame": 1, "window": [1000000, 300000],
     "why": "32-bit unsigned, 15 frames, implicit VR: frame 1"},
    {"name": "rtdose_f8", "file": "rtdose.dcm", "frame": 8, "window": [1000000, 300000],
     "why": "32-bit unsigned multi-frame: a middle frame"},
    {"name": "rtdose_rle_f15", "file": "rtdose_rle.dcm", "frame": 15, "window": [1050000, 400000],
     "why": "RLE multi-frame: the last frame"},
    {"name": "SC_rgb_rle_2frame_f2", "file": "SC_rgb_rle_2frame.dcm", "frame": 2, "window": [100, 50],
     "why": "colour multi-frame: frame 2; colour ignores the window"},
    {"name": "MR_small_mono1", "file": "MR_small.dcm", "frame": 1, "window": [300, 600],
     "derive": {"PhotometricInterpretation": "MONOCHROME1"},
     "why": "MONOCHROME1 (derived from MR_small): window first, then inversion"},
    {"name": "CT_small_sigmoid", "file": "CT_small.dcm", "frame": 1, "window": [40, 400],
     "derive": {"VOILUTFunction": "SIGMOID"},
     "why": "a file whose VOI LUT Function is SIGMOID: --set-window keeps the function"},
]


def bundled(name: str) -> Path:
    found = get_testdata_file(name, download=False)
    if found is None:
        raise SystemExit(f"error: pydicom does not ship {name}")
    return Path(found)


def derive(src: Path, attributes: dict, dst: Path) -> Path:
    """A copy of ``src`` with ``attributes`` set; the tests do the same."""
    ds = pydicom.dcmread(src)
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    ds.save_as(dst)
    return dst


def number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def tool_version(cmd: str) -> str:
    out = subprocess.run([cmd, "--version"], capture_output=True, text=True)
    return (out.stdout.strip().splitlines() or [""])[0]


def main() -> int:
    if not shutil.which("dcmj2pnm"):
        print("error: dcmj2pnm not found (apt-get install dcmtk)", file=sys.stderr)
        return 2
    OUT.mkdir(exist_ok=True)
    for old in OUT.glob("*.png"):
        old.unlink()
    data = str(bundled("CT_small.dcm").parent)
    references = []
    with tempfile.TemporaryDirectory(prefix="dcmwin-") as td:
        tmp = Path(td)
        for case in CASES:
            src = bundled(case["file"])
            shown_src = f"$PYDICOM_DATA/{src.name}"
            if case.get("derive"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    src = derive(src, case["derive"], tmp / f"{case['name']}.dcm")
                shown_src = f"$TMP/{src.name}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(src, stop_before_pixels=True)
            center, width = (number(v) for v in case["window"])
            raw = tmp / f"{case['name']}.dcmtk.png"
            cmd = ["dcmj2pnm", "--write-png", "--no-overlays", "--frame", str(case["frame"]),
                   "--set-window", center, width, str(src), str(raw)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0 or not raw.exists():
                print(f"error: {case['name']}: {proc.stderr.strip()}", file=sys.stderr)
                return 1
            png = f"{case['name']}.png"
            with Image.open(raw) as im:
                im.load()
                if im.mode not in ("L", "RGB"):
                    im = im.convert("RGB" if im.mode in ("RGBA", "P") else "L")
                im.save(OUT / png, format="PNG", optimize=True, compress_level=9)
                size = list(im.size)
            shown = ["dcmj2pnm", *cmd[1:-2], shown_src, "$TMP/out.png"]
            references.append({
                "name": case["name"],
                "file": case["file"],
                "derive": case.get("derive", {}),
                "frame": case["frame"],
                "window": case["window"],
                "png": png,
                "png_size": size,
                "photometric": str(ds.get("PhotometricInterpretation", "")),
                "transfer_syntax": str(ds.file_meta.get("TransferSyntaxUID", "")),
                "bits_allocated": int(ds.BitsAllocated),
                "pixel_representation": int(ds.get("PixelRepresentation", 0)),
                "number_of_frames": int(ds.get("NumberOfFrames", 1) or 1),
                "why": case["why"],
                "command": " ".join(shown),
            })
            print(f"  ok  {case['name']:24s} {' '.join(shown)}")
    manifest = {
        "generator": "tests/refs/make_window_refs.py",
        "dcmtk": tool_version("dcmj2pnm"),
        "pydicom": pydicom.__version__,
        "conventions": {
            "file": "bundled pydicom test file: pydicom.data.get_testdata_file(file, download=False)",
            "derive": "attributes (by keyword) set on a copy of the file before rendering; the tests do the same",
            "frame": "1-based (dcmj2pnm --frame)",
            "window": "[center, width] given as dcmj2pnm --set-window C W",
            "output": "8-bit L or RGB PNG as dcmj2pnm --write-png wrote it, re-encoded losslessly by Pillow",
            "tolerance": "every file here is stored losslessly: compare within ±1 grey level",
            "command": f"$PYDICOM_DATA = pydicom's test_files folder ({Path(data).name}), $TMP = scratch dir",
        },
        "references": references,
    }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n")
    print(f"{len(references)} references in {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
