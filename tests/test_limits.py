"""Memory and time bombs refused before decoding: the frame-size limit and codestream headers
checked against the data set (dicomsvc.imaging.precheck)."""

import dataclasses
import struct
import warnings
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data.data_manager import DATA_ROOT, external_data_sources
from pydicom.encaps import generate_frames
from pydicom.pixels import pixel_array
from pydicom.uid import UID, JPEG2000, JPEG2000Lossless, JPEGBaseline8Bit, JPEGLSLossless, RLELossless

import bombs
from conftest import make_config
from dicomfiles import make_ct, sample_file, save
from dicomsvc.dicom.parse import read
from dicomsvc.errors import CodestreamMismatch, DicomSvcError, FrameTooLarge
from dicomsvc.imaging import decode, precheck


@pytest.fixture
def decoder_calls(monkeypatch) -> list[str]:
    """Every call of a pydicom decoder: a bomb must be refused before any."""
    calls: list[str] = []
    real = decode.get_decoder

    def spy(uid):
        decoder = real(uid)

        class Spy:
            def as_array(self, *args, **kwargs):
                calls.append(str(uid))
                raise RuntimeError("the decoder was called")

        return Spy() if decoder else decoder

    monkeypatch.setattr(decode, "get_decoder", spy)
    return calls


@pytest.mark.parametrize("kind", sorted(bombs.CODESTREAM_BOMBS))
def test_a_codestream_claiming_another_size_is_stored_with_a_warning_then_415(client, import_root, decoder_calls, kind):
    bombs.CODESTREAM_BOMBS[kind](import_root / "bomb.dcm")
    created = client.post("/dicom", json={"path": "bomb.dcm"})
    assert created.status_code == 201, created.text
    warning = created.json()["warnings"][0]
    assert "65535 rows x 65535 columns" in warning and "header describes" in warning
    instance = created.json()["id"]
    for answer in (
        client.get("/image", params={"id": instance}),
        client.get("/image", params={"id": instance, "window": "40,400"}),  # rendered on request
        client.get(f"/dicom/{instance}/pixels"),
    ):
        assert (answer.status_code, answer.json()["error"]) == (415, "unsupported_transfer_syntax")
    assert decoder_calls == []


@pytest.mark.parametrize(
    "build",
    [
        bombs.rle_rows_columns,
        lambda path: bombs.dataset_claims("MR_small_jp2klossless.dcm", path),
        lambda path: bombs.dataset_claims("MR_small_jpeg_ls_lossless.dcm", path),
        lambda path: bombs.dataset_claims("SC_rgb_jpeg_dcmtk.dcm", path),
    ],
    ids=["rle", "j2k", "jpeg-ls", "jpeg"],  # native data that short is refused by parse (pixel_problem)
)
def test_a_frame_over_the_limit_is_stored_with_a_warning_then_413(client, import_root, decoder_calls, build):
    build(import_root / "big.dcm")
    created = client.post("/dicom", json={"path": "big.dcm"})
    assert created.status_code == 201, created.text
    assert "DICOMSVC_MAX_FRAME_BYTES" in created.json()["warnings"][0]
    instance = created.json()["id"]
    for answer in (
        client.get("/image", params={"id": instance, "window": "40,400"}),
        client.get(f"/dicom/{instance}/pixels"),
    ):
        assert (answer.status_code, answer.json()["error"]) == (413, "too_large"), answer.text
    assert decoder_calls == []


def test_the_frame_limit_is_a_setting(data_dir, import_root, monkeypatch):
    from starlette.testclient import TestClient

    from app import create_app
    from dicomsvc.config import Config

    monkeypatch.setattr(decode, "_max_frame_bytes", decode._max_frame_bytes)  # restored after
    save(make_ct(np.zeros((32, 48), np.int16)), import_root / "ct.dcm")  # 3072 bytes a frame
    for limit, warned in ((3071, True), (3072, False)):
        config = dataclasses.replace(make_config(data_dir / str(limit), import_root, 0), max_frame_bytes=limit)
        with TestClient(create_app(config)) as client:
            created = client.post("/dicom", json={"path": "ct.dcm"}).json()
            assert bool(created.get("warnings")) is warned, created
    assert Config.from_env({"DICOMSVC_MAX_FRAME_BYTES": "1024"}).max_frame_bytes == 1024


def test_a_decoder_panic_is_a_warning_then_415(client, import_root):
    """pylibjpeg-rle panics (pyo3_runtime.PanicException, a BaseException) on a segment
    that decodes past its frame."""
    bombs.rle_panic(import_root / "panic.dcm")
    created = client.post("/dicom", json={"path": "panic.dcm"})
    assert created.status_code == 201, created.text
    assert "PanicException" in created.json()["warnings"][0]
    answer = client.get(f"/dicom/{created.json()['id']}/pixels")
    assert (answer.status_code, answer.json()["error"]) == (415, "unsupported_transfer_syntax")


def _bundled_with_pixels():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # pydicom's own test files and pydicom-data's (get_testdata_files would hash each of those)
        local = Path(DATA_ROOT, "test_files").glob("*.dcm")
        external = [p for source in external_data_sources().values() for p in source.get_paths("*.dcm", 0)]
        for path in sorted({*map(str, local), *external}):
            try:
                parsed = read(path)
            except DicomSvcError:
                continue
            if parsed.pixel is not None:
                yield path, parsed


def test_every_bundled_file_pydicom_decodes_passes_the_checks():
    """No false alarm: a pydicom test file whose first frame pydicom decodes is never refused
    by a check (the JPEG, JPEG-LS, JPEG 2000, HTJ2K and RLE ones; native ones only have
    their size checked, as above)."""
    checked = set()
    for path, parsed in _bundled_with_pixels():
        syntax = UID(parsed.transfer_syntax or "")
        if not (syntax.is_transfer_syntax and syntax.is_encapsulated):
            continue
        try:
            decode.decode_frame(path, parsed, 0)
        except (CodestreamMismatch, FrameTooLarge) as exc:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    pixel_array(path, index=0)
                except Exception:
                    continue  # pydicom cannot decode it either (a codestream that lies)
            pytest.fail(f"{path}: {exc.detail}")
        except DicomSvcError:
            continue  # refused by the decoder, as before
        checked.add(syntax)
    assert {JPEGBaseline8Bit, JPEGLSLossless, JPEG2000Lossless, JPEG2000, RLELossless} <= checked


def _frame(name: str) -> tuple[bytes, precheck.Geometry]:
    ds = dcmread(sample_file(name))
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    geom = precheck.geometry({"rows": ds.Rows, "columns": ds.Columns, "samples_per_pixel": ds.SamplesPerPixel, "bits_allocated": ds.BitsAllocated})
    return frame, geom


def test_codestream_headers_are_read_as_the_standards_lay_them_out():
    # JPEG SOF (ITU T.81 B.2.2): P Y X Nf; samples and precision are compared too
    frame, geom = _frame("SC_rgb_jpeg_dcmtk.dcm")
    precheck.check_codestream(JPEGBaseline8Bit, frame, geom)
    sof = frame.index(b"\xff\xc0")
    for offset, value, fmt in ((9, 1, ">B"), (4, 12, ">B"), (5, 0, ">H")):  # Nf 1; P 12; Y 0 (DNL)
        bad = bytearray(frame)
        struct.pack_into(fmt, bad, sof + offset, value)
        with pytest.raises(CodestreamMismatch):
            precheck.check_codestream(JPEGBaseline8Bit, bytes(bad), geom)
    with pytest.raises(CodestreamMismatch, match="SOI"):
        precheck.check_codestream(JPEGBaseline8Bit, b"\x00" + frame, geom)
    # JPEG 2000 SIZ (ITU T.800 A.5.1): the image is Xsiz - XOsiz wide
    frame, geom = _frame("MR_small_jp2klossless.dcm")
    precheck.check_codestream(JPEG2000Lossless, frame, geom)
    siz = frame.index(b"\xff\x51")
    bad = bytearray(frame)
    struct.pack_into(">II", bad, siz + 6, 64 + 10, 64 + 10)  # Xsiz Ysiz
    struct.pack_into(">II", bad, siz + 14, 10, 10)  # XOsiz YOsiz: still 64 x 64
    precheck.check_codestream(JPEG2000Lossless, bytes(bad), geom)
    struct.pack_into(">I", bad, siz + 14, 11)
    with pytest.raises(CodestreamMismatch, match="64 rows x 63 columns"):
        precheck.check_codestream(JPEG2000Lossless, bytes(bad), geom)
    # ... in a JP2 file's jp2c box (ITU T.800 I.5.4) too
    jp2 = bombs_jp2(frame)
    precheck.check_codestream(JPEG2000Lossless, jp2, geom)
    # RLE header (PS3.5 G.5): as many segments as samples x bytes, ascending offsets
    frame, geom = _frame("SC_rgb_rle.dcm")
    precheck.check_codestream(RLELossless, frame, geom)
    for header in (struct.pack("<16I", 2, 64, 100, *[0] * 13), struct.pack("<16I", 3, 64, 50, 100, *[0] * 12)):
        with pytest.raises(CodestreamMismatch):
            precheck.check_codestream(RLELossless, header + frame[64:], geom)


def bombs_jp2(codestream: bytes) -> bytes:
    """A minimal JP2 file around ``codestream``: signature, ftyp, an empty jp2h, jp2c."""
    box = lambda kind, body: struct.pack(">I4s", 8 + len(body), kind) + body  # noqa: E731
    return precheck.JP2_SIGNATURE + box(b"ftyp", b"jp2 \x00\x00\x00\x00jp2 ") + box(b"jp2h", b"") + box(b"jp2c", codestream)
