"""Accept parsing and transfer syntax negotiation of WADO-RS (PS3.18 §8.7.3, §8.7.5), and the
multipart/related framing (RFC 2046 §5.1)."""

import pytest

from dicomsvc.http.dicomweb.multipart import (
    EXPLICIT_LE,
    IMPLICIT_LE,
    Multipart,
    frames_representation,
    instance_syntax,
    parse_accept,
)

J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
RLE = "1.2.840.10008.1.2.5"
OHIF_QUOTED = 'multipart/related; type="application/octet-stream"; transfer-syntax=*'
OHIF_UNQUOTED = "multipart/related; type=application/octet-stream"


def test_accept_quoted_unquoted_q_values_and_commas_inside_quotes():
    ranges = parse_accept(
        'image/png;q=0.5, multipart/related; type="application/dicom"; transfer-syntax="1.2.840.10008.1.2.1",'
        ' multipart/related; type=application/octet-stream; q=0.8, text/x; q=0, weird, a/b; q=zz,'
        ' x/y; name="a,b;c"'
    )
    assert [r.media for r in ranges] == ["multipart/related", "x/y", "multipart/related", "image/png"]
    assert ranges[0].part_type == "application/dicom" and ranges[0].transfer_syntax == EXPLICIT_LE
    assert ranges[1].params["name"] == "a,b;c"
    assert ranges[2].part_type == "application/octet-stream" and ranges[2].q == 0.8
    assert [r.media for r in parse_accept(None)] == ["*/*"]
    assert [r.media for r in parse_accept("  ")] == ["*/*"]


@pytest.mark.parametrize("accept", [OHIF_QUOTED, OHIF_QUOTED.replace('"', ""), OHIF_UNQUOTED])
def test_ohif_accept_forms(accept):
    compressed = frames_representation(parse_accept(accept), J2K_LOSSLESS, decodable=True)
    native = frames_representation(parse_accept(accept), EXPLICIT_LE, decodable=True)
    assert native.native and native.part_content_type == f"application/octet-stream; transfer-syntax={EXPLICIT_LE}"
    if "transfer-syntax=*" in accept:  # the stored frames, the part naming their syntax
        assert not compressed.native
        assert compressed.part_content_type == f"application/octet-stream; transfer-syntax={J2K_LOSSLESS}"
    else:  # no parameter: uncompressed (PS3.18 Table 8.7.3-4 default)
        assert compressed.native


def test_frames_negotiation():
    def rep(accept, stored, decodable=True, single=False):
        return frames_representation(parse_accept(accept), stored, decodable, single_part=single)

    assert rep('multipart/related; type="image/jls"', "1.2.840.10008.1.2.4.80").part_content_type == (
        "image/jls; transfer-syntax=1.2.840.10008.1.2.4.80"
    )
    assert rep('multipart/related; type="image/x-jls"', "1.2.840.10008.1.2.4.80").part_type == "image/x-jls"
    assert rep('multipart/related; type="image/jpeg"', JPEG_BASELINE).part_type == "image/jpeg"
    assert rep('multipart/related; type="image/x-dicom-rle"', RLE).part_content_type.endswith(RLE)
    assert rep('multipart/related; type="image/jp2"', RLE) is None  # we never re-compress
    assert rep('multipart/related; type="image/jp2"', RLE, decodable=False) is None
    # q-values: the client's best first, the next alternative when that one cannot be made
    best = rep('multipart/related; type="image/jp2"; q=0.9, multipart/related; type="image/jls"', J2K_LOSSLESS)
    assert best.part_type == "image/jp2"
    fallback = rep('multipart/related; type="image/jls", multipart/related; type=application/octet-stream; q=0.5', RLE)
    assert fallback.native
    assert rep("application/octet-stream", EXPLICIT_LE) is None  # single part only where allowed
    assert not rep("application/octet-stream", EXPLICIT_LE, single=True).multipart
    assert rep("multipart/related; type=application/octet-stream", RLE, decodable=False) is None
    assert rep("image/png", EXPLICIT_LE) is None
    assert rep("*/*", RLE).multipart  # frames: multipart unless a single part is asked for
    bulk = frames_representation(parse_accept("*/*"), RLE, True, single_part=True, bulk=True)
    assert bulk.native and not bulk.multipart  # the Pixel Data URI fetched plainly: the value


def test_instance_negotiation():
    def syntax(accept, stored, decodable=True, single=False):
        chosen = instance_syntax(parse_accept(accept), stored, decodable, single_part=single)
        return chosen and chosen[0]

    dicom = 'multipart/related; type="application/dicom"'
    assert syntax(dicom, J2K_LOSSLESS) == EXPLICIT_LE  # PS3.18 Table 8.7.3-2 default
    assert syntax(dicom, J2K_LOSSLESS, decodable=False) is None
    assert syntax(dicom, JPEG_BASELINE) == JPEG_BASELINE  # lossy stays as stored (PS3.18 §8.7.3)
    assert syntax(dicom + "; transfer-syntax=*", J2K_LOSSLESS) == J2K_LOSSLESS
    assert syntax(dicom + "; transfer-syntax=*", IMPLICIT_LE) == EXPLICIT_LE  # not for the web
    assert syntax(dicom + f"; transfer-syntax={IMPLICIT_LE}", IMPLICIT_LE) is None
    assert syntax(dicom + f"; transfer-syntax={JPEG_BASELINE}", EXPLICIT_LE) is None
    assert syntax(f"{dicom}; transfer-syntax={JPEG_BASELINE}, {dicom}; q=0.2", EXPLICIT_LE) == EXPLICIT_LE
    assert syntax("*/*", RLE) == EXPLICIT_LE
    assert syntax("application/json", EXPLICIT_LE) is None
    assert syntax("application/dicom", EXPLICIT_LE) is None
    assert instance_syntax(parse_accept("application/dicom"), EXPLICIT_LE, True, single_part=True) == (
        EXPLICIT_LE,
        False,
    )


def test_multipart_framing():
    random = Multipart("application/dicom")
    assert random.boundary != Multipart("application/dicom").boundary
    seeded = Multipart("application/octet-stream", seed="abc")
    assert seeded.boundary == Multipart("application/octet-stream", seed="abc").boundary
    assert seeded.content_type == f'multipart/related; type="application/octet-stream"; boundary={seeded.boundary}'
    body = seeded.head("a/b", 3) + b"xyz" + seeded.head("a/b") + b"" + seeded.tail()
    b = seeded.boundary.encode()
    assert body == (
        b"--" + b + b"\r\nContent-Type: a/b\r\nContent-Length: 3\r\n\r\nxyz"
        b"\r\n--" + b + b"\r\nContent-Type: a/b\r\n\r\n"
        b"\r\n--" + b + b"--\r\n"
    )
    empty = Multipart("a/b")
    assert empty.tail() == f"--{empty.boundary}--\r\n".encode()
