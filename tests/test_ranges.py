"""Range requests on /dicom/{id}/file and /dicom/{id}/pixels: RFC 9110 §14, JSON errors."""

import io

import numpy as np
import pytest

from dicomfiles import blob_files, make_ct


def plan(header: str, size: int):
    from dicomsvc.http.ranges import plan

    return plan(header, size)


@pytest.mark.parametrize(
    "header, expected",
    [
        ("bytes=0-9", "bytes=0-9"),
        ("bytes=10-", "bytes=10-99"),
        ("bytes=-10", "bytes=90-99"),
        ("bytes=-1000", "bytes=0-99"),  # a suffix longer than the file: all of it
        ("bytes=90-1000", "bytes=90-99"),
        ("BYTES = 0-0 , 5-6,", "bytes=0-0,5-6"),  # case, spaces around the list, empty elements
        ("bytes=0-1,100-200,-5", "bytes=0-1,95-99"),  # the unsatisfiable one is dropped
        ("bytes=0-" + "9" * 5000, "bytes=0-99"),  # more digits than int() takes
    ],
)
def test_plan_serves_what_lies_within_the_file(header, expected):
    assert plan(header, 100) == expected


@pytest.mark.parametrize(
    "header",
    ["items=0-1", "bytes", "bytes=", "bytes=,", "bytes=abc", "bytes=5-1", "bytes=0-1,x", "bytes=1 - 2", "bytes=٠-١",
     "bytes=--1", "bytes=+1-2", "bytes=1_0-20", "bytes=" + "2" * 30 + "-" + "1" * 30, "bytes=010-9"],
)  # fmt: skip
def test_plan_ignores_what_is_not_a_byte_ranges_specifier(header):
    assert plan(header, 100) is None  # the whole file, 200


@pytest.mark.parametrize("header", ["bytes=100-", "bytes=100-200", "bytes=-0", "bytes=200-300,-0", "bytes=" + "9" * 5000 + "-"])
def test_plan_refuses_ranges_that_select_nothing(header):
    from dicomsvc.errors import RangeNotSatisfiable

    with pytest.raises(RangeNotSatisfiable):
        plan(header, 100)


@pytest.fixture
def stored(client):
    buf = io.BytesIO()
    make_ct(np.arange(64 * 64, dtype=np.int16).reshape(64, 64)).save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    response = client.post("/dicom", content=data, headers={"content-type": "application/dicom"})
    assert response.status_code == 201
    return response.json()["id"], data


def test_ranges_of_the_stored_file(client, stored):
    instance_id, data = stored
    url = f"/dicom/{instance_id}/file"
    first = client.get(url, headers={"Range": "bytes=128-131"})
    assert (first.status_code, first.content) == (206, b"DICM")
    assert first.headers["content-range"] == f"bytes 128-131/{len(data)}"
    tail = client.get(url, headers={"Range": f"bytes=-4,{len(data) + 10}-"})  # one of two lies in the file
    assert (tail.status_code, tail.content) == (206, data[-4:])
    both = client.get(url, headers={"Range": "bytes=0-1,128-131"})
    assert both.status_code == 206 and both.headers["content-type"].startswith("multipart/byteranges")
    assert b"DICM" in both.content


@pytest.mark.parametrize(
    "header", ["bytes=abc", "items=0-1", "bytes=5-1", "bytes=0-1,junk", "bytes=" + "2" * 4500 + "-" + "1" * 4500]
)
def test_a_malformed_range_is_ignored_whole_file_200(client, stored, header):
    instance_id, data = stored
    response = client.get(f"/dicom/{instance_id}/file", headers={"Range": header})
    assert response.status_code == 200, response.text
    assert response.content == data


@pytest.mark.parametrize(
    "header", ["bytes=999999999-", "bytes=-0", "bytes=" + "9" * 5000 + "-", "bytes=" + "1" * 4500 + "-" + "2" * 4500]
)
def test_an_unsatisfiable_range_is_416_json(client, stored, header):
    instance_id, data = stored
    response = client.get(f"/dicom/{instance_id}/file", headers={"Range": header})
    assert response.status_code == 416
    assert response.json()["error"] == "range_not_satisfiable" and response.json()["detail"]
    assert response.headers["content-range"] == f"bytes */{len(data)}"


def test_a_stale_if_range_sends_the_whole_file(client, stored):
    instance_id, data = stored
    response = client.get(f"/dicom/{instance_id}/file", headers={"Range": "bytes=999999999-", "If-Range": '"stale"'})
    assert (response.status_code, response.content) == (200, data)


def test_pixels_ranges_and_no_temp_file_left(client, stored, data_dir):
    instance_id, _ = stored
    url = f"/dicom/{instance_id}/pixels"
    whole = client.get(url)
    assert whole.status_code == 200
    part = client.get(url, headers={"Range": "bytes=0-5"})
    assert (part.status_code, part.content) == (206, b"\x93NUMPY")
    refused = client.get(url, headers={"Range": "bytes=99999999-"})
    assert refused.status_code == 416 and refused.json()["error"] == "range_not_satisfiable"
    assert client.get(url, headers={"Range": "pages=1"}).content == whole.content
    assert [p for p in blob_files(data_dir) if p.suffix == ".npy"] == []
