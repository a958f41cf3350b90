#!/usr/bin/env python
"""Generate dcmtk reference renders of pydicom's test files.

Run from the repository root with the project venv:

    .venv/bin/python tests/refs/make_refs.py

Requirements (Debian): ``apt-get install dcmtk libgdcm-tools``.

For every file in ``pydicom/data/test_files/*.dcm``,
``pydicom/data/charset_files/*.dcm`` and the pydicom-data package's data folder
(pydicom's external test files, ``pip install pydicom-data``; it is in the
``test`` extra) that has Pixel Data (7FE0,0010), frame 1 is rendered with
dcmtk's ``dcmj2pnm`` (8-bit PNG) and re-encoded losslessly with Pillow at
maximum compression into ``tests/refs/<stem>.png``.  A ``manifest.json``
describing each render (and every skipped file with the reason) is written next
to it.  Nothing is downloaded: only files that ship inside the pydicom and
pydicom-data wheels are used (the script stops if pydicom-data is missing, so a
run without it cannot silently drop references).  pydicom-data holds many
re-encodings of one image (``MR2_UNCI``, ``MR2_UNCR``, ``MR2_J2KI``...): a
pydicom-data reference whose PNG is byte-identical to one already written
shares that PNG (its ``png`` names the earlier file); the bundled files keep one
PNG each, as before.  A reference whose own PNG would exceed ``PNG_CAP`` bytes
is skipped (with its size as the reason) to keep the repository small.

Decoding fallbacks (only when ``dcmj2pnm`` itself cannot decode the file):

* JPEG-LS: decompressed with dcmtk's own ``dcmdjpls`` (same CharLS decoder
  family as dcmtk, stays inside dcmtk), then rendered with ``dcmj2pnm``.
* anything else (JPEG 2000, malformed headers): decompressed with GDCM's
  ``gdcmconv --raw`` then rendered with ``dcmj2pnm``.
* files whose native Pixel Data is shorter than Rows*Columns*... (truncated)
  are skipped rather than handed to GDCM, which silently pads them.

The script is deterministic: the output PNGs carry no timestamps/text chunks
and the manifest contains no temp paths (commands use ``$PYDICOM_DATA`` for
pydicom's data folder and ``$TMP`` for the scratch directory).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pydicom
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.tag import Tag

HERE = Path(__file__).resolve().parent
SIZE_BUDGET = 5 * 1024 * 1024  # bytes, for every file directly in tests/refs
PNG_CAP = 640 * 1024  # bytes: a larger reference PNG is skipped (the 1.2 MB RG1_* CR renders)

PIXEL_DATA = Tag(0x7FE0, 0x0010)

# Transfer syntaxes -------------------------------------------------------
NATIVE = {
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
}
JPEG_LOSSY = {  # JPEG baseline / extended (and retired lossy processes)
    "1.2.840.10008.1.2.4.50",
    "1.2.840.10008.1.2.4.51",
    "1.2.840.10008.1.2.4.52",
    "1.2.840.10008.1.2.4.53",
    "1.2.840.10008.1.2.4.54",
    "1.2.840.10008.1.2.4.55",
    "1.2.840.10008.1.2.4.56",
    "1.2.840.10008.1.2.4.59",
    "1.2.840.10008.1.2.4.60",
    "1.2.840.10008.1.2.4.61",
    "1.2.840.10008.1.2.4.62",
    "1.2.840.10008.1.2.4.63",
    "1.2.840.10008.1.2.4.64",
}
JPEG_LOSSLESS = {
    "1.2.840.10008.1.2.4.57",
    "1.2.840.10008.1.2.4.58",
    "1.2.840.10008.1.2.4.65",
    "1.2.840.10008.1.2.4.66",
    "1.2.840.10008.1.2.4.70",
}
JPEGLS_LOSSLESS = "1.2.840.10008.1.2.4.80"
JPEGLS_NEAR = "1.2.840.10008.1.2.4.81"
J2K_LOSSLESS = {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201",
                "1.2.840.10008.1.2.4.202"}
J2K_MAYBE_LOSSY = {"1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203",
                   "1.2.840.10008.1.2.4.92", "1.2.840.10008.1.2.4.93"}
RLE = "1.2.840.10008.1.2.5"

MONO = {"MONOCHROME1", "MONOCHROME2"}

BASE_OPTS = ["--write-png", "--frame", "1", "--no-overlays"]


# --------------------------------------------------------------------------
def data_root() -> Path:
    """pydicom's bundled data folder (no download: CT_small.dcm is bundled)."""
    return Path(get_testdata_file("CT_small.dcm")).parent.parent


def external_root() -> Path | None:
    """pydicom-data's data folder (the "pydicom-data" external source), if installed."""
    from pydicom.data.data_manager import external_data_sources

    source = external_data_sources().get("pydicom-data")
    return Path(source.data_path) if source is not None else None


def tool_version(cmd: str) -> str:
    out = subprocess.run([cmd, "--version"], capture_output=True, text=True)
    return (out.stdout.strip().splitlines() or [""])[0]


def clean_err(text: str) -> str:
    """Keep dcmtk/gdcm E:/F: lines (and other non-warning lines), dedup."""
    lines = []
    for ln in text.splitlines():
        ln = ln.strip()
        if not ln or ln.startswith("W:") or ln.startswith("I:"):
            continue
        if ln not in lines:
            lines.append(ln)
    return " | ".join(lines) if lines else text.strip()


def run(cmd: list[str]) -> tuple[int, str]:
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode, (p.stderr + p.stdout)


def disp(cmd: list[str], subst: dict[str, str]) -> str:
    """Command line with temp/data paths replaced by stable placeholders."""
    out = []
    for a in cmd:
        for real, ph in subst.items():
            if a.startswith(real):
                a = ph + a[len(real):]
                break
        out.append(a if re.fullmatch(r"[\w.,/$+=:-]+", a) else f"'{a}'")
    return " ".join(out)


# Lossiness helpers -------------------------------------------------------
def first_fragment_bytes(ds) -> bytes:
    """Raw bytes of the encapsulated pixel data (all items, concatenated is
    fine for marker searching of frame 1 headers)."""
    return bytes(ds.PixelData)


def jpegls_near(ds) -> int | None:
    """NEAR parameter of the first JPEG-LS scan (SOS) or None."""
    buf = first_fragment_bytes(ds)
    soi = buf.find(b"\xff\xd8")
    if soi < 0:
        return None
    sos = buf.find(b"\xff\xda", soi)
    if sos < 0:
        return None
    ns = buf[sos + 4]
    return buf[sos + 5 + 2 * ns]


def j2k_irreversible(ds) -> bool | None:
    """True if the first J2K codestream uses the 9-7 irreversible wavelet."""
    buf = first_fragment_bytes(ds)
    soc = buf.find(b"\xff\x4f\xff\x51")
    if soc < 0:
        return None
    i = soc + 2
    while i + 4 <= len(buf):
        marker = buf[i:i + 2]
        length = int.from_bytes(buf[i + 2:i + 4], "big")
        if marker == b"\xff\x52":  # COD
            # Lcod(2) Scod(1) SGcod(4) SPcod: levels, cbw, cbh, cbstyle, transform
            return buf[i + 4 + 1 + 4 + 4] == 0
        if marker == b"\xff\x90":  # SOT: no COD in main header
            return None
        i += 2 + length
    return None


def is_lossy(ds, ts: str) -> bool:
    lic = str(ds.get("LossyImageCompression", "") or "").strip()
    if ts in JPEG_LOSSY:
        return True
    if ts == JPEGLS_NEAR:
        near = jpegls_near(ds)
        return bool(near) if near is not None else lic == "01"
    if ts in J2K_MAYBE_LOSSY:
        irr = j2k_irreversible(ds)
        return bool(irr) or lic == "01"
    if ts in J2K_LOSSLESS:
        return bool(j2k_irreversible(ds))
    return False  # native, deflate, RLE, JPEG lossless, JPEG-LS lossless


def expected_native_len(ds) -> int | None:
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        ba = int(ds.BitsAllocated)
    except Exception:
        return None
    bits = rows * cols * spp * ba  # frame 1 only
    return (bits + 7) // 8


def header_diff(before, after_path: Path) -> dict:
    """Image-pixel attributes changed by an external decompressor."""
    keys = ["SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated",
            "BitsStored", "HighBit", "PixelRepresentation", "PlanarConfiguration",
            "RescaleSlope", "RescaleIntercept", "WindowCenter", "WindowWidth"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        after = pydicom.dcmread(after_path, stop_before_pixels=True, force=True)
    diff = {}
    for k in keys:
        a, b = before.get(k), after.get(k)
        if str(a) != str(b):
            diff[k] = [None if a is None else str(a), None if b is None else str(b)]
    return diff


def ival(v):
    try:
        return int(v)
    except Exception:
        return None if v is None else str(v)


# --------------------------------------------------------------------------
def candidates(root: Path, external: Path):
    """(folder, path) pairs of bundled and pydicom-data .dcm files, sorted, deterministic."""
    out = []
    for folder in ("test_files", "charset_files"):
        for p in sorted((root / folder).glob("*.dcm")):
            out.append((folder, p))
    bundled = {p.name for _, p in out}
    for p in sorted(external.glob("*.dcm")):
        if p.name not in bundled:  # get_testdata_file() would find pydicom's own first
            out.append(("pydicom-data", p))
    return out


def png_names(cands) -> dict[Path, str]:
    stems = {}
    for folder, p in cands:
        stems.setdefault(p.stem, set()).add(folder)
    names = {}
    for folder, p in cands:
        clash = len(stems[p.stem]) > 1
        prefix = "charset_" if (clash and folder == "charset_files") else ""
        names[p] = f"{prefix}{p.stem}.png"
    return names


def render_one(folder: str, path: Path, png_name: str, tmp: Path, subst,
               written: dict[str, str]):
    """Return (entry, None) on success or (None, skipped) on failure.

    ``written`` maps the SHA-256 of every PNG written so far to its name.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path, force=True)
    ts = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "") or "")
    pi = str(ds.get("PhotometricInterpretation", "") or "").strip()
    spp = ival(ds.get("SamplesPerPixel", 1))

    # window selection
    if pi in MONO or (pi == "" and spp == 1):
        if "VOILUTSequence" in ds:
            mode, wopts = "voi_lut", ["--use-voi-lut", "1"]
        elif "WindowCenter" in ds and "WindowWidth" in ds:
            mode, wopts = "window", ["--use-window", "1"]
        else:
            mode, wopts = "minmax", ["--min-max-window"]
    else:
        mode, wopts = "color", []

    raw_png = tmp / (path.stem + ".dcmtk.png")
    attempts = []
    ba = ival(ds.get("BitsAllocated"))
    if ts == "1.2.840.10008.1.2.2" and isinstance(ba, int) and ba > 16:
        # Known toolkit disagreement, not a rendering we can use as a reference:
        # dcmtk (and GDCM) byte-swap Big Endian OW Pixel Data as 16-bit words, so
        # 32-bit samples come out with their two halves swapped, whereas pydicom
        # (and the identical little-endian twin file) read them as 32-bit values.
        return None, {"file": path.name, "folder": folder,
                      "reason": f"Explicit VR Big Endian with Bits Allocated {ba}: dcmtk "
                                "(and GDCM) byte-swap OW Pixel Data as 16-bit words, so each "
                                "32-bit sample has its 16-bit halves swapped; the render is "
                                "garbage compared with the little-endian twin (e.g. "
                                "rtdose.dcm) and with pydicom's decoding, so it is not a "
                                "usable reference"}
    if "Rows" not in ds or "Columns" not in ds or not pi:
        n = len(ds.PixelData) if PIXEL_DATA in ds else 0
        attempts.append(f"no Image Pixel module (Rows/Columns/PhotometricInterpretation "
                        f"missing; Pixel Data is only {n} bytes)")

    def dcmj2pnm(src: Path):
        cmd = ["dcmj2pnm", *BASE_OPTS, *wopts, str(src), str(raw_png)]
        rc, err = run(cmd)
        return cmd, rc, err

    # 1. plain dcmj2pnm
    cmd, rc, err = dcmj2pnm(path)
    via, command, notes = "dcmj2pnm", disp(cmd, subst), {}
    attempts.append(f"dcmj2pnm: {clean_err(err)}")

    if rc != 0 or not raw_png.exists():
        # truncated native pixel data: never let a fallback pad it
        exp = expected_native_len(ds) if ts in NATIVE else None
        have = len(ds.PixelData) if PIXEL_DATA in ds else 0
        if exp is not None and have < exp:
            return None, {"file": path.name, "folder": folder,
                          "reason": f"truncated Pixel Data ({have} of {exp} bytes "
                                    f"for frame 1); dcmtk: {clean_err(err)}"}
        pre = None
        if ts in (JPEGLS_LOSSLESS, JPEGLS_NEAR) and shutil.which("dcmdjpls"):
            dec = tmp / (path.stem + ".dcmdjpls.dcm")
            pre = ["dcmdjpls", str(path), str(dec)]
            rc2, err2 = run(pre)
            attempts.append(f"dcmdjpls: {clean_err(err2)}" if rc2 else "dcmdjpls: ok")
            if rc2 == 0:
                cmd, rc, err = dcmj2pnm(dec)
                via = "dcmdjpls+dcmj2pnm"
                attempts.append(f"dcmdjpls+dcmj2pnm: {clean_err(err)}")
        if (rc != 0 or not raw_png.exists()) and shutil.which("gdcmconv"):
            dec = tmp / (path.stem + ".gdcmconv.dcm")
            pre = ["gdcmconv", "--raw", str(path), str(dec)]
            rc2, err2 = run(pre)
            attempts.append(f"gdcmconv: {clean_err(err2)}" if rc2 else "gdcmconv: ok")
            if rc2 == 0 and dec.exists():
                cmd, rc, err = dcmj2pnm(dec)
                via = "gdcmconv+dcmj2pnm"
                attempts.append(f"gdcmconv+dcmj2pnm: {clean_err(err)}")
                if rc == 0:
                    d = header_diff(ds, dec)
                    if d:
                        notes["gdcmconv_changed_attributes"] = d
        elif not shutil.which("gdcmconv"):
            attempts.append("gdcmconv: not installed (apt-get install libgdcm-tools)")
        if rc != 0 or not raw_png.exists():
            return None, {"file": path.name, "folder": folder,
                          "reason": "; ".join(a for a in attempts if not a.endswith(": ok"))}
        command = disp(pre, subst) + " && " + disp(cmd, subst)

    # 2. lossless re-encode at max compression, no metadata chunks
    with Image.open(raw_png) as im:
        im.load()
        if im.mode not in ("L", "RGB"):
            im = im.convert("RGB" if im.mode in ("RGBA", "P") else "L")
        im.save(HERE / png_name, format="PNG", optimize=True, compress_level=9)
        size = im.size
    raw_png.unlink()
    data = (HERE / png_name).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if folder == "pydicom-data" and digest in written:
        (HERE / png_name).unlink()  # the same render as an earlier file: share its PNG
        png_name = written[digest]
    elif len(data) > PNG_CAP:
        (HERE / png_name).unlink()
        return None, {"file": path.name, "folder": folder,
                      "reason": f"rendered by dcmtk ({via}), but the reference PNG would be "
                                f"{len(data) // 1024} KiB, over the {PNG_CAP // 1024} KiB cap "
                                "per reference (tests/refs stays small)"}
    else:
        written.setdefault(digest, png_name)

    entry = {
        "file": path.name,
        "folder": folder,
        "png": png_name,
        "mode": mode,
        "lossy": is_lossy(ds, ts),
        "photometric": pi or None,
        "transfer_syntax": ts or None,
        "bits_allocated": ival(ds.get("BitsAllocated")),
        "bits_stored": ival(ds.get("BitsStored")),
        "pixel_representation": ival(ds.get("PixelRepresentation")),
        "samples_per_pixel": spp,
        "number_of_frames": ival(ds.get("NumberOfFrames", 1)),
        "rows": ival(ds.get("Rows")),
        "columns": ival(ds.get("Columns")),
        "png_size": list(size),
        "lossy_image_compression": (str(ds.LossyImageCompression)
                                    if "LossyImageCompression" in ds else None),
        "via": via,
        "command": command,
    }
    if notes:
        entry["notes"] = notes
    return entry, None


def main() -> int:
    for tool in ("dcmj2pnm",):
        if not shutil.which(tool):
            print(f"error: {tool} not found (apt-get install dcmtk)", file=sys.stderr)
            return 2
    root = data_root()
    external = external_root()
    if external is None:
        print("error: pydicom-data not installed (pip install pydicom-data==1.0.0)",
              file=sys.stderr)
        return 2
    cands = candidates(root, external)
    names = png_names(cands)

    # remove previous outputs so the run is reproducible
    for old in HERE.glob("*.png"):
        old.unlink()

    refs, skipped = [], []
    written: dict[str, str] = {}  # PNG SHA-256 -> name
    with tempfile.TemporaryDirectory(prefix="dcmrefs-") as td:
        tmp = Path(td)
        subst = {str(tmp): "$TMP", str(root): "$PYDICOM_DATA",
                 str(external): "$PYDICOM_DATA_STORE"}
        for folder, p in cands:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    hdr = pydicom.dcmread(p, force=True, specific_tags=[PIXEL_DATA])
                has_pixels = PIXEL_DATA in hdr
            except Exception as exc:  # unreadable by pydicom: check dcmtk's opinion
                has_pixels = False
                print(f"  note: pydicom cannot read {p.name}: {exc}")
            if not has_pixels:
                continue
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                entry, skip = render_one(folder, p, names[p], tmp, subst, written)
            if skip:
                reason = skip["reason"]
                for real, ph in subst.items():
                    reason = reason.replace(real, ph)
                skip["reason"] = reason
            if entry:
                refs.append(entry)
                print(f"  ok   {p.name:44s} {entry['mode']:7s} {entry['via']}")
            else:
                skipped.append(skip)
                print(f"  SKIP {p.name:44s} {skip['reason'][:90]}")

    manifest = {
        "generator": "tests/refs/make_refs.py",
        "dcmtk": tool_version("dcmj2pnm"),
        "gdcm": tool_version("gdcmconv") if shutil.which("gdcmconv") else None,
        "pydicom": pydicom.__version__,
        "pydicom_data": importlib.metadata.version("pydicom-data"),
        # verified with synthetic files: dcmj2pnm renders MONOCHROME1 inverted
        # (low=255, high=0 in its output pipeline) without any option
        "monochrome1_inverted_by_default": True,
        "conventions": {
            "file": "bare file name; folder 'test_files' or 'pydicom-data' -> "
                    "pydicom.data.get_testdata_file(file), folder 'charset_files' -> "
                    "pydicom.data.get_charset_files(file)[0]; 'pydicom-data' files come "
                    "from the pydicom-data package (pydicom's external test files)",
            "frame": "frame 1 only (dcmj2pnm --frame 1)",
            "output": "8-bit grayscale (L) or 24-bit RGB PNG exactly as dcmj2pnm "
                      "--write-png wrote it, re-encoded losslessly by Pillow; a "
                      "'pydicom-data' reference whose PNG is byte-identical to an earlier "
                      "one names that earlier PNG",
            "mode": "window = --use-window 1 (first Window Center/Width); "
                    "voi_lut = --use-voi-lut 1 (preferred when a VOI LUT Sequence "
                    "is present); minmax = --min-max-window; color = no VOI options",
            "lossy": "true when the stored encoding is lossy (JPEG baseline/extended, "
                     "JPEG-LS with NEAR>0, JPEG 2000 irreversible or flagged "
                     "LossyImageCompression=01); compare such files with a tolerance",
            "command": "$PYDICOM_DATA = pydicom/data, $PYDICOM_DATA_STORE = the "
                       "pydicom-data package's data folder, $TMP = scratch dir",
        },
        "references": refs,
        "skipped": skipped,
    }
    mpath = HERE / "manifest.json"
    mpath.write_text(json.dumps(manifest, indent=1) + "\n")

    total = sum(f.stat().st_size for f in HERE.iterdir() if f.is_file())
    by_mode: dict[str, int] = {}
    by_via: dict[str, int] = {}
    for e in refs:
        by_mode[e["mode"]] = by_mode.get(e["mode"], 0) + 1
        by_via[e["via"]] = by_via.get(e["via"], 0) + 1
    print()
    print(f"rendered {len(refs)} files, skipped {len(skipped)}")
    print("  by mode:", ", ".join(f"{k}={v}" for k, v in sorted(by_mode.items())))
    print("  by via: ", ", ".join(f"{k}={v}" for k, v in sorted(by_via.items())))
    for s in skipped:
        print(f"  skipped {s['file']}: {s['reason']}")
    print(f"tests/refs total size: {total / 1024:.0f} KiB")
    if total > SIZE_BUDGET:
        print("WARNING: over the size budget", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
