"""A JPEG or PNG file → a Secondary Capture Image Storage instance (PS3.3 A.8.1), in a worker.

The SC Image IOD's modules (PS3.3 A.8.1.3): Patient, General Study, General Series, SC
Equipment (Conversion Type (0008,0064) WSD: made on a workstation), General Image, Image
Pixel, SC Image, SOP Common. The attributes the request gave come in the *capture*
(``dicomsvc.photos``, checked there against their VRs); Type 2 attributes it did not give
are present and empty.

- A baseline JPEG (SOF0, 8-bit samples: ITU T.81 process 1) is kept as it is, encapsulated
  in one fragment under JPEG Baseline (1.2.840.10008.1.2.4.50; PS3.5 §8.2.1, A.4), after one
  decode at 1/8 scale proves its entropy-coded data whole. Photometric Interpretation
  (PS3.5 §8.2.1, PS3.3 C.7.6.3.1.2): MONOCHROME2 for one component; for three, RGB when an
  Adobe APP14 marker says no colour transform (or the components are named R, G, B without
  JFIF), else YBR_FULL_422 when the chrominance is subsampled (its sampling factors are below
  the luminance's) and YBR_FULL when it is not.
- An extended (SOF1) or progressive (SOF2) JPEG with 8-bit samples is decoded and stored
  natively (it cannot be JPEG Baseline without re-encoding); other JPEG processes (12-bit,
  lossless, arithmetic, hierarchical) are refused (415).
- A PNG is decoded and stored natively in Explicit VR Little Endian: grey as MONOCHROME2 of
  8 or 16 bits, colour as RGB of 8 bits. Palette images become RGB; an alpha channel is
  dropped (not composited); 16-bit colour is reduced to 8 bits (Pillow's RGB); grey of 1, 2
  or 4 bits is scaled to 8.

Before anything is decoded the image's own header is read (JPEG SOF, ITU T.81 B.2.2; PNG
IHDR, ISO/IEC 15948 §11.2.2) and its decoded size held to DICOMSVC_MAX_FRAME_BYTES (413), and
every PNG chunk's CRC is checked (§5.3). Damaged images are 422 ``invalid_image``, bodies that
are neither format 415.
"""

import io
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

from ..errors import FrameTooLarge, InvalidImage, TooLarge, UnsupportedMediaType
from .precheck import JPEG_SOF, jpeg_segments

SC_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage (PS3.4 B.5)
MAX_DIMENSION = 65535  # (0028,0010) Rows and (0028,0011) Columns are US (PS3.5 Table 6.2-1)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG IHDR colour types (ISO/IEC 15948 §11.2.2 Table 11.1) → samples per pixel once converted
PNG_SAMPLES = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}


@dataclass(frozen=True)
class JpegHeader:
    """What a JPEG says of itself before its first scan (ITU T.81 B.2.2; JFIF; Adobe APP14)."""

    sof: int  # the SOFn marker's second byte: 0xC0 baseline, 0xC1 extended, 0xC2 progressive...
    precision: int  # P: bits per sample
    rows: int  # Y
    columns: int  # X
    components: tuple[tuple[int, int, int], ...]  # (C id, H, V) per component
    jfif: bool  # an APP0 "JFIF" segment
    adobe_transform: int | None  # APP14 "Adobe" transform flag: 0 none (RGB/CMYK), 1 YCbCr, 2 YCCK


def jpeg_header(data: bytes) -> JpegHeader:
    """Walk the marker segments from SOI to the first SOF (ITU T.81 B.1.1); InvalidImage when
    they are malformed or no frame header comes before the scan data."""
    jfif, adobe = False, None
    try:
        for marker, pos, length in jpeg_segments(data):
            body = data[pos + 2 : pos + length]
            if len(body) != length - 2:
                break
            if marker == 0xE0 and body.startswith(b"JFIF\0"):
                jfif = True
            elif marker == 0xEE and body.startswith(b"Adobe") and len(body) >= 12:
                adobe = body[11]
            elif marker in JPEG_SOF:
                if len(body) < 6:
                    break
                precision, rows, columns, count = struct.unpack_from(">BHHB", body)
                if len(body) < 6 + 3 * count:
                    break
                components = tuple((body[6 + 3 * i], body[7 + 3 * i] >> 4, body[7 + 3 * i] & 0x0F) for i in range(count))
                return JpegHeader(marker, precision, rows, columns, components, jfif, adobe)
    except ValueError:
        raise InvalidImage("the JPEG's marker segments are malformed (ITU T.81 B.1.1)") from None
    raise InvalidImage("the JPEG has no readable frame header (SOF, ITU T.81 B.2.2) before its scan data")


def jpeg_photometric(header: JpegHeader) -> str:
    """PS3.5 §8.2.1 and PS3.3 C.7.6.3.1.2, from the JPEG's components and markers."""
    if len(header.components) == 1:
        return "MONOCHROME2"
    ids = bytes(c[0] for c in header.components)
    if header.adobe_transform == 0 or (header.adobe_transform is None and not header.jfif and ids == b"RGB"):
        return "RGB"
    (_, h0, v0), *chroma = header.components
    subsampled = any(h < h0 or v < v0 for _, h, v in chroma)
    return "YBR_FULL_422" if subsampled else "YBR_FULL"


def png_header(data: bytes) -> tuple[int, int, int, int]:
    """(width, height, bit depth, colour type) from IHDR, after every chunk's CRC is checked
    (ISO/IEC 15948 §5.3: over the chunk type and data) and IHDR found first and IEND last;
    InvalidImage otherwise."""
    pos, end, chunks = len(PNG_SIGNATURE), len(data), []
    while pos + 12 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > end:
            break
        (crc,) = struct.unpack_from(">I", data, pos + 8 + length)
        if zlib.crc32(data[pos + 4 : pos + 8 + length]) != crc:
            raise InvalidImage("a PNG chunk fails its CRC check (ISO/IEC 15948 §5.3): the file is damaged")
        chunks.append((kind, pos + 8, length))
        pos += 12 + length
        if kind == b"IEND":
            break
    if not chunks or chunks[0][0] != b"IHDR" or chunks[0][2] != 13:
        raise InvalidImage("the PNG does not start with an IHDR chunk (ISO/IEC 15948 §5.6)")
    if chunks[-1][0] != b"IEND":
        raise InvalidImage("the PNG ends before its IEND chunk: it is truncated (ISO/IEC 15948 §11.2.5)")
    width, height, depth, colour = struct.unpack_from(">IIBB", data, chunks[0][1])
    if colour not in PNG_SAMPLES or not width or not height:
        raise InvalidImage("the PNG's IHDR is not valid (ISO/IEC 15948 §11.2.2)")
    return width, height, depth, colour


def convert(src: Path, spec: dict, max_frame_bytes: int, out: BinaryIO) -> None:
    """Write the SC instance for the image in ``src`` (its capture ``spec``) to ``out``."""
    size = src.stat().st_size
    if size > max_frame_bytes:  # no image is larger than its decoded frame in these formats
        raise TooLarge(f"an image file of {size} bytes is over DICOMSVC_MAX_FRAME_BYTES ({max_frame_bytes})")
    data = src.read_bytes()
    if data.startswith(b"\xff\xd8\xff"):
        ds = _from_jpeg(data, max_frame_bytes)
    elif data.startswith(PNG_SIGNATURE):
        ds = _from_png(data, max_frame_bytes)
    else:
        raise UnsupportedMediaType("the image is neither a JPEG nor a PNG (by its first bytes)")
    _describe(ds, spec)
    ds.save_as(out, enforce_file_format=True)


def _check_size(rows: int, columns: int, samples: int, bytes_per_sample: int, max_frame_bytes: int) -> None:
    if rows > MAX_DIMENSION or columns > MAX_DIMENSION:
        raise TooLarge(
            f"an image of {columns} x {rows} pixels: DICOM Rows and Columns (US) hold at most {MAX_DIMENSION}"
        )
    frame = rows * columns * samples * bytes_per_sample
    if frame > max_frame_bytes:
        raise FrameTooLarge(
            f"an image of {columns} x {rows} pixels x {samples} samples is {frame} bytes decoded, over the "
            f"limit of {max_frame_bytes} bytes (DICOMSVC_MAX_FRAME_BYTES)"
        )


def _decoded(data: bytes, what: str, draft: tuple[int, int] | None = None) -> Image.Image:
    """The image decoded by Pillow (at reduced scale with ``draft``: JPEG's DCT scaling, still
    every entropy-coded byte read); Pillow's errors on damaged data as InvalidImage. Pillow's
    own pixel-count guard stays on (its error is 413); the explicit limit was checked before."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if draft is not None:
                image.draft(image.mode, draft)
            image.load()
            return image
    except Image.DecompressionBombError:
        raise TooLarge(f"the {what} has more pixels than the image decoder allows") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        raise InvalidImage(f"the {what} could not be decoded: it is truncated or damaged ({type(exc).__name__})") from None


def _from_jpeg(data: bytes, max_frame_bytes: int) -> Dataset:
    header = jpeg_header(data)
    samples = len(header.components)
    if header.rows == 0 or header.columns == 0:  # lines given later by DNL (B.2.5): size unknown
        raise InvalidImage("the JPEG's frame header gives no image size (ITU T.81 B.2.2)")
    if samples not in (1, 3):
        raise UnsupportedMediaType(f"a JPEG of {samples} components (CMYK?): only grey and colour (1 or 3) are taken")
    _check_size(header.rows, header.columns, samples, 1, max_frame_bytes)
    if header.precision != 8 or header.sof not in (0xC0, 0xC1, 0xC2):
        raise UnsupportedMediaType(
            f"a JPEG of process SOF{header.sof - 0xC0} with {header.precision}-bit samples: only 8-bit "
            "baseline, extended or progressive JPEGs are taken (ITU T.81 Table B.1)"
        )
    if header.sof != 0xC0:  # not JPEG Baseline: decoded and stored natively
        image = _decoded(data, "JPEG")
        ds = _native(image.convert("L" if samples == 1 else "RGB"))
        ds.LossyImageCompression = "01"  # (0028,2110): it was lossy compressed once (PS3.3 C.7.6.1.1.5)
        ds.LossyImageCompressionMethod = "ISO_10918_1"  # (0028,2114)
        ds.LossyImageCompressionRatio = _ratio(ds.Rows * ds.Columns * samples, len(data))
        return ds
    _decoded(data, "JPEG", draft=(max(1, header.columns // 8), max(1, header.rows // 8)))
    ds = _base(JPEGBaseline8Bit)
    ds.SamplesPerPixel = samples
    ds.PhotometricInterpretation = jpeg_photometric(header)
    ds.Rows, ds.Columns = header.rows, header.columns
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    if samples == 3:
        ds.PlanarConfiguration = 0  # PS3.5 §8.2.1: irrelevant for JPEG, so 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    ds.LossyImageCompressionRatio = _ratio(header.rows * header.columns * samples, len(data))
    ds.PixelData = encapsulate([data])  # one frame, one fragment, padded to even length (PS3.5 A.4)
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    return ds


def _from_png(data: bytes, max_frame_bytes: int) -> Dataset:
    width, height, depth, colour = png_header(data)
    samples = PNG_SAMPLES[colour]
    _check_size(height, width, samples, 2 if depth == 16 and samples == 1 else 1, max_frame_bytes)
    image = _decoded(data, "PNG")
    if image.mode in ("I;16", "I;16B", "I"):  # 16-bit grey
        return _native(image, sixteen=True)
    return _native(image.convert("L" if samples == 1 else "RGB"))


def _native(image: Image.Image, sixteen: bool = False) -> Dataset:
    """Image Pixel module (PS3.3 C.7.6.3) for decoded pixels, in Explicit VR Little Endian.
    Pillow's L, RGB (colour-by-pixel) and I;16 (little endian) raw bytes are already DICOM's
    layout: they are taken as they are (one copy; numpy's would add two more)."""
    ds = _base(ExplicitVRLittleEndian)
    if image.mode in ("L", "RGB", "I;16"):
        data = image.tobytes()
    else:  # I;16B, or I (32-bit) holding 16-bit values
        data = np.clip(np.asarray(image), 0, 65535).astype("<u2").tobytes()
    colour = image.mode == "RGB"
    bits = 16 if sixteen else 8
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = "RGB" if colour else "MONOCHROME2"
    ds.Rows, ds.Columns = image.height, image.width
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if colour:
        ds.PlanarConfiguration = 0  # colour-by-pixel, as Pillow holds it
    ds.PixelData = data
    ds["PixelData"].VR = "OW" if sixteen else "OB"
    return ds


def _ratio(decoded: int, encoded: int) -> str:
    """(0028,2112) Lossy Image Compression Ratio, a DS of at most 16 characters."""
    return f"{decoded / max(encoded, 1):.2f}"[:16]


def _base(transfer_syntax: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta.MediaStorageSOPClassUID = SC_IMAGE_STORAGE
    return ds


def _describe(ds: Dataset, spec: dict) -> None:
    """Every module but Image Pixel: the capture's attributes, UIDs, dates."""
    fields, nonce = spec["fields"], spec["nonce"]
    date, time = spec["created"][:8], spec["created"][8:]
    if any(not value.isascii() for value in fields.values()):
        ds.SpecificCharacterSet = "ISO_IR 192"  # (0008,0005) UTF-8 (PS3.3 C.12.1.1.2)
    # SOP Common (C.12.1)
    ds.SOPClassUID = SC_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid(entropy_srcs=[nonce, "instance", str(spec["number"])])
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.TimezoneOffsetFromUTC = "+0000"  # (0008,0201): the dates and times here are UTC
    # Patient (C.7.1.1): Type 2, empty unless given
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex"):
        setattr(ds, keyword, fields.get(keyword, ""))
    # General Study (C.7.2.1)
    ds.StudyInstanceUID = fields.get("StudyInstanceUID") or generate_uid(entropy_srcs=[nonce, "study"])
    # a stored study's own (dicomsvc.photos.attach), else this image's
    ds.StudyDate, ds.StudyTime = fields.get("StudyDate", date), fields.get("StudyTime", time)
    ds.ReferringPhysicianName = fields.get("ReferringPhysicianName", "")
    ds.StudyID = fields.get("StudyID", "")
    ds.AccessionNumber = fields.get("AccessionNumber", "")
    if "StudyDescription" in fields:
        ds.StudyDescription = fields["StudyDescription"]
    # General Series (C.7.3.1)
    ds.Modality = fields["Modality"]
    ds.SeriesInstanceUID = generate_uid(entropy_srcs=[nonce, "series"])
    ds.SeriesNumber = None
    # Type 2C, for a paired body part without Image Laterality: unknown here, so empty
    # (dciodvfy's condition cannot tell; an empty value is always allowed)
    ds.Laterality = None
    if "SeriesDescription" in fields:
        ds.SeriesDescription = fields["SeriesDescription"]
    # SC Equipment (C.8.6.1): made on a workstation from an image file
    ds.ConversionType = "WSD"
    # General Image (C.7.6.1)
    ds.InstanceNumber = spec["number"]
    ds.PatientOrientation = None  # Type 2C: no Image Orientation (Patient) here
    ds.ContentDate, ds.ContentTime = date, time
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.BurnedInAnnotation = spec["burned_in"]  # (0028,0301)
    # SC Image (C.8.6.2)
    ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = date, time
