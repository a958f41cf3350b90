"""PNG encode benchmark: dicomsvc.imaging.png vs Pillow vs stdlib zlib.

    .venv/bin/python bench/png_encode.py [--runs 200] [--no-threads]

Builds a 512x512 CT-like slice (soft-tissue window, body in a black
background, correlated noise) and a 512x512 photo-like RGB image, then times
each encoder on each image, round-robin (one encode of every encoder per
round, in shuffled order), so drift on a noisy shared machine hits all
encoders alike: compare ratios within one run, not absolute figures across
runs.  Every output is
decoded with Pillow and must be pixel-identical (exit status 1 otherwise).

Finally it checks whether encoding releases the GIL (how fast a pure-Python
loop runs in the main thread while a worker thread encodes) and compares two
threads encoding in parallel against the same work done serially.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import statistics
import sys
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dicomsvc.imaging import png  # noqa: E402
from dicomsvc.imaging.png import encode_png  # noqa: E402

Encoder = Callable[[np.ndarray], bytes]


# --------------------------------------------------------------------------
# test images
# --------------------------------------------------------------------------
def ct_slice(n: int = 512, seed: int = 0, center: float = 40.0, width: float = 400.0) -> np.ndarray:
    """A CT-like axial slice windowed to 8 bits (default: soft tissue, W400 L40).

    Elliptical torso (fat rim, soft tissue, two lungs, spine, aorta, a textured
    organ, a table) inside a circular field of view, air and padding black.
    Noise ~15 HU, spatially correlated as after a soft reconstruction kernel.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
    cy, cx = 0.53, 0.5

    def ellipse(x0: float, y0: float, rx: float, ry: float) -> np.ndarray:
        return ((xx - x0) / rx) ** 2 + ((yy - y0) / ry) ** 2 <= 1.0

    hu = np.full((n, n), -1000.0, np.float32)
    hu[ellipse(cx, cy, 0.40, 0.29)] = -100.0  # subcutaneous fat
    hu[ellipse(cx, cy, 0.36, 0.25)] = 40.0  # soft tissue
    for side in (-1, 1):
        hu[ellipse(cx + side * 0.15, cy - 0.03, 0.12, 0.17)] = -850.0  # lungs
    organ = ellipse(cx + 0.06, cy + 0.05, 0.09, 0.07)
    hu[organ] = (60.0 + 15.0 * np.sin(xx * 90) * np.cos(yy * 70))[organ]
    hu[ellipse(cx + 0.035, cy + 0.11, 0.025, 0.025)] = 180.0  # aorta (contrast)
    hu[ellipse(cx, cy + 0.17, 0.045, 0.04)] = 700.0  # vertebra
    hu[ellipse(cx, cy + 0.145, 0.013, 0.013)] = 20.0  # spinal canal
    hu[int(n * 0.86) : int(n * 0.88), int(n * 0.12) : int(n * 0.88)] = 300.0  # table
    white = rng.normal(0.0, 1.0, (n + 2, n + 2)).astype(np.float32)
    noise = sum(white[i : i + n, j : j + n] for i in range(3) for j in range(3)) * (15.0 / 3.0)
    hu += noise * (hu > -950)  # a scanner's air is ~quiet after windowing anyway
    hu[(xx - 0.5) ** 2 + (yy - 0.5) ** 2 > 0.25] = -2000.0  # outside the field of view
    # DICOM linear VOI (PS3.3 C.11.2.1.2.1)
    out = ((hu - (center - 0.5)) / (width - 1) + 0.5) * 255.0
    return np.floor(np.clip(out, 0, 255) + 0.5).astype(np.uint8)


def photo_rgb(n: int = 512, seed: int = 1) -> np.ndarray:
    """A photo-like RGB image: smooth colour field, hard-edged shapes, texture, sensor noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((n, n), Image.Resampling.BICUBIC), np.float32)
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    for _ in range(12):  # flat-shaded discs
        x0, y0, r = rng.uniform(0, n), rng.uniform(0, n), rng.uniform(n / 30, n / 6)
        disc = (xx - x0) ** 2 + (yy - y0) ** 2 <= r * r
        img[disc] = 0.5 * img[disc] + 0.5 * rng.uniform(0, 255, 3)
    img += (12.0 * np.sin(xx / 5.0 + yy / 11.0))[..., None] * np.array([1.0, 0.8, 0.5], np.float32)
    img += rng.normal(0.0, 3.0, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------
def ours(row_filter: png.RowFilter, level: int = 1) -> Encoder:
    return lambda arr: encode_png(arr, level=level, row_filter=row_filter)


def stdlib_zlib(row_filter: png.RowFilter, level: int = 1) -> Encoder:
    """Same filter and chunk writer, stdlib zlib instead of ISA-L (uses the module's internals)."""

    def enc(arr: np.ndarray) -> bytes:
        height, width = arr.shape[:2]
        data = zlib.compress(png._filter_scanlines(arr, row_filter), level)
        return png._assemble(width, height, 0 if arr.ndim == 2 else 2, data)

    return enc


def adaptive(level: int = 1) -> Encoder:
    """libpng's per-row heuristic (bench-only alternative): for every row, the filter
    whose output has the smallest sum of |byte as int8|; all candidates computed in numpy."""

    def enc(arr: np.ndarray) -> bytes:
        height, width = arr.shape[:2]
        filters: tuple[png.RowFilter, ...] = ("none", "sub", "up", "average", "paeth")
        cands = np.stack([png._filter_scanlines(arr, f).reshape(height, -1) for f in filters])
        cost = np.abs(cands[:, :, 1:].view(np.int8), dtype=np.int16).sum(axis=2, dtype=np.int64)
        best = cands[cost.argmin(axis=0), np.arange(height)]
        return png._assemble(width, height, 0 if arr.ndim == 2 else 2, png._deflate(best, level))

    return enc


def pillow(level: int) -> Encoder:
    def enc(arr: np.ndarray) -> bytes:
        bio = io.BytesIO()
        Image.fromarray(arr).save(bio, "PNG", compress_level=level)
        return bio.getvalue()

    return enc


ENCODERS: list[tuple[str, Encoder]] = [
    ("ours average  isal-1 (default)", ours("average")),
    ("ours none     isal-1", ours("none")),
    ("ours sub      isal-1", ours("sub")),
    ("ours up       isal-1", ours("up")),
    ("ours paeth    isal-1", ours("paeth")),
    ("ours adaptive isal-1 (per row)", adaptive()),
    ("ours average  isal-0", ours("average", 0)),
    ("ours average  isal-2", ours("average", 2)),
    ("ours average  zlib-1 (stdlib)", stdlib_zlib("average")),
    ("Pillow compress_level=1", pillow(1)),
    ("Pillow compress_level=6", pillow(6)),
]


def decodes_identical(data: bytes, arr: np.ndarray) -> bool:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        back = np.asarray(im)
    return back.shape == arr.shape and back.dtype == arr.dtype and bool(np.array_equal(back, arr))


def bench_image(label: str, arr: np.ndarray, runs: int) -> bool:
    outputs = {name: enc(arr) for name, enc in ENCODERS}  # also warms up
    times: dict[str, list[float]] = {name: [] for name, _ in ENCODERS}
    order = list(ENCODERS)
    rng = random.Random(0)
    for _ in range(runs):
        rng.shuffle(order)  # no encoder always runs right after the same (cache-trashing) one
        for name, enc in order:
            t0 = time.perf_counter()
            enc(arr)
            times[name].append((time.perf_counter() - t0) * 1e3)
    base = statistics.median(times[ENCODERS[0][0]])
    pil1 = statistics.median(times["Pillow compress_level=1"])
    pil1_size = len(outputs["Pillow compress_level=1"])
    print(f"\n{label}: shape {arr.shape}, raw {arr.nbytes} bytes, {runs} runs each")
    print(
        f"  {'encoder':31s} {'median ms':>9s} {'p95 ms':>7s} {'x ours':>7s} {'x PIL-1':>7s}"
        f" {'bytes':>8s} {'vs PIL-1':>8s}  decode"
    )
    ok = True
    for name, _ in ENCODERS:
        ts = sorted(times[name])
        med, p95 = statistics.median(ts), ts[min(len(ts) - 1, round(0.95 * (len(ts) - 1)))]
        size = len(outputs[name])
        same = decodes_identical(outputs[name], arr)
        ok &= same
        print(
            f"  {name:31s} {med:9.3f} {p95:7.3f} {med / base:7.2f} {med / pil1:7.3f}"
            f" {size:8d} {size / pil1_size - 1:+8.1%}  {'identical' if same else 'MISMATCH'}"
        )
    return ok


# --------------------------------------------------------------------------
# threads / GIL
# --------------------------------------------------------------------------
def gil_check(arr: np.ndarray, encodes: int) -> None:
    """Main-thread pure-Python loop rate while a worker encodes, vs. while it sleeps
    (GIL released: similar) and while it runs Python (GIL held: far lower)."""

    def rate_while(work: Callable[[], object]) -> float:
        done = threading.Event()
        worker = threading.Thread(target=lambda: (work(), done.set()))
        count, t0 = 0, time.perf_counter()
        worker.start()
        while not done.is_set():
            count += 1
        elapsed = time.perf_counter() - t0
        worker.join()
        return count / elapsed / 1e3

    t0 = time.perf_counter()
    for _ in range(encodes):
        encode_png(arr)
    work_ms = (time.perf_counter() - t0) * 1e3
    raw = png._filter_scanlines(arr, "average")
    print(f"\nGIL check ({encodes} encodes of {arr.shape} in a worker thread, ~{work_ms:.0f} ms):")
    cases: list[tuple[str, Callable[[], object]]] = [
        ("worker sleeps (GIL free)", lambda: time.sleep(work_ms / 1e3)),
        ("worker runs encode_png", lambda: [encode_png(arr) for _ in range(encodes)]),
        ("  ... only isal deflate", lambda: [png._deflate(raw, 1) for _ in range(encodes)]),
        ("  ... only numpy filter", lambda: [png._filter_scanlines(arr, "average") for _ in range(encodes * 4)]),
        ("worker runs Python (GIL held)", lambda: sum(range(encodes * 200_000))),
    ]
    for name, work in cases:
        print(f"  {name:31s} main-thread loop: {rate_while(work):9.0f} iterations/ms")


def thread_scaling(arr: np.ndarray, encodes: int) -> None:
    def work(k: int) -> None:
        for _ in range(k):
            encode_png(arr)

    print(f"\nthreads ({arr.shape}, {2 * encodes} encodes in total; nproc={len(os.sched_getaffinity(0))}):")
    for _ in range(3):
        t0 = time.perf_counter()
        work(2 * encodes)
        serial = time.perf_counter() - t0
        pair = [threading.Thread(target=work, args=(encodes,)) for _ in range(2)]
        t0 = time.perf_counter()
        for t in pair:
            t.start()
        for t in pair:
            t.join()
        parallel = time.perf_counter() - t0
        print(
            f"  serial {serial * 1e3:7.1f} ms   2 threads {parallel * 1e3:7.1f} ms"
            f"   speed-up {serial / parallel:4.2f}x"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=200, help="timed encodes per encoder and image")
    ap.add_argument("--no-threads", action="store_true", help="skip the GIL / thread section")
    args = ap.parse_args()

    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, Pillow {Image.__version__},"
          f" deflate from {png._deflate.__module__}, nproc {len(os.sched_getaffinity(0))}")
    ct, rgb = ct_slice(), photo_rgb()
    ok = bench_image("CT-like slice, W400 L40", ct, args.runs)
    ok &= bench_image("photo-like RGB", rgb, args.runs)
    if not args.no_threads:
        gil_check(rgb, 40)
        thread_scaling(ct, 200)
        thread_scaling(rgb, 30)
    if not ok:
        print("\nFAILED: some output did not decode pixel-identical", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
