"""Anonymization benchmark: ms per instance for read + anonymize + write.

    .venv/bin/python bench/anonymize.py [--n 60] [--rounds 5] [--disk]

Synthesizes 512x512 int16 CT instances (bench/corpus.synthesize: realistic
headers with nested sequences, ~0.5 MB each) and times, per instance, in the same
run and alternating round by round (bytes in memory, or files with --disk):

* baseline: pydicom ``dcmread`` + ``dcmwrite`` (what any ingest pays anyway);
* anonymize: ``dcmread`` + ``dicomsvc.dicom.anonymize.anonymize`` + ``dcmwrite``.

Prints both (median of the per-round means, and the best round) and their
ratio, and checks that the anonymized output re-reads with the same pixel data.
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import pydicom  # noqa: E402

from corpus import synthesize  # noqa: E402
from report import machine_facts  # noqa: E402
from dicomsvc.dicom.anonymize import TABLE_EDITION, TABLE_PACKAGE, anonymize, profile_table  # noqa: E402

SECRET = b"bench-secret-not-for-production"


OUT_DIR: Path | None = None  # --disk: read from and write to files instead of memory


def _source(item):
    return item if isinstance(item, Path) else io.BytesIO(item)


def _write(ds) -> bytes:
    if OUT_DIR is not None:
        pydicom.dcmwrite(OUT_DIR / "out.dcm", ds, enforce_file_format=True)
        return b""
    out = io.BytesIO()
    pydicom.dcmwrite(out, ds, enforce_file_format=True)
    return out.getvalue()


def plain(item) -> bytes:
    return _write(pydicom.dcmread(_source(item)))


def anonymized(item) -> bytes:
    return _write(anonymize(pydicom.dcmread(_source(item)), SECRET))


def time_round(fn, items: list) -> float:
    t0 = time.perf_counter()
    for item in items:
        fn(item)
    return (time.perf_counter() - t0) * 1000 / len(items)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="instances (default 60)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (default 5)")
    ap.add_argument("--disk", action="store_true", help="read files and write files (default: bytes in memory)")
    args = ap.parse_args()
    global OUT_DIR  # noqa: PLW0603 - a benchmark script's one switch

    facts = machine_facts()
    print(f"machine: {facts['nproc']} cores, {facts['cpu_model']}; python {facts['python']}, pydicom {facts['pydicom']}")
    with tempfile.TemporaryDirectory(prefix="anon-bench-") as tmp:
        corpus = synthesize(Path(tmp) / "in", args.n)
        blobs = [inst.path.read_bytes() for inst in corpus.instances]
        if args.disk:
            OUT_DIR = Path(tmp)
            return run(args, corpus, blobs, [inst.path for inst in corpus.instances])
        return run(args, corpus, blobs, blobs)


def run(args, corpus, blobs: list[bytes], items: list) -> int:
    size_mb = sum(map(len, blobs)) / len(blobs) / 1e6
    print(f"corpus: {len(blobs)} synthetic CT instances, 512x512 int16, {size_mb:.2f} MB each, {corpus.n_elements} elements")
    profile_table()  # parse the table once, outside the timing (it is cached per process)
    print(f"profile table: {TABLE_PACKAGE} {profile_table().package_version}, DICOM edition {TABLE_EDITION}")
    print(f"i/o: {'files on disk (read a file, write a file)' if OUT_DIR else 'bytes in memory'}")

    # correctness first: same pixels, re-readable, different UIDs
    src = pydicom.dcmread(io.BytesIO(blobs[0]))
    buf = io.BytesIO()
    pydicom.dcmwrite(buf, anonymize(src, SECRET), enforce_file_format=True)
    back = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    if back.PixelData != src.PixelData or back.SOPInstanceUID == src.SOPInstanceUID:
        print("FAIL: anonymized output does not keep the pixel data or kept the SOP Instance UID")
        return 1

    for fn in (plain, anonymized):  # warm-up
        time_round(fn, items[: min(10, len(items))])
    base, anon = [], []
    for _ in range(args.rounds):
        base.append(time_round(plain, items))
        anon.append(time_round(anonymized, items))
    b_med, a_med = statistics.median(base), statistics.median(anon)
    print()
    print(f"{'variant':<34}{'median ms/inst':>16}{'best ms/inst':>14}")
    print(f"{'pydicom read + write (baseline)':<34}{b_med:>16.2f}{min(base):>14.2f}")
    print(f"{'read + anonymize + write':<34}{a_med:>16.2f}{min(anon):>14.2f}")
    print(f"{'anonymize alone (difference)':<34}{a_med - b_med:>16.2f}{min(anon) - min(base):>14.2f}")
    print(f"ratio (anonymized / baseline): {a_med / b_med:.2f}x median, {min(anon) / min(base):.2f}x best")
    print(f"target: read + anonymize + write < 10 ms per instance: {'met' if a_med < 10 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
