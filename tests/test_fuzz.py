"""The mutation fuzzer (bench/fuzz.py): its reader and mutations, its checks, and a run of a few
hundred mutants against a live server (uvicorn subprocess, two worker processes), which must
give no 5xx, no hang, a live server after every mutant, workers under the memory limit, no
orphan blobs or rows, and no patient data in the server's log or in error details."""

import random
import sqlite3
import sys
import warnings
from pathlib import Path

import pydicom
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import fuzz  # noqa: E402

pytestmark = pytest.mark.same_in_scale_run("the fuzzed server runs in a subprocess with its own environment (SQLite, local blobs)")

SEED = 9  # fixed: CI sends the same mutants every run (bench/fuzz.py --seed 9 --only I reproduces one)


@pytest.fixture(scope="module")
def corpus() -> list[fuzz.Doc]:
    return fuzz.load_corpus()


def test_corpus_covers_every_transfer_syntax(corpus):
    syntaxes = {doc.ts for doc in corpus}
    assert {
        fuzz.TS_IMPLICIT,
        fuzz.TS_EXPLICIT,
        fuzz.TS_BIG,
        fuzz.TS_DEFLATED,
        "1.2.840.10008.1.2.4.50",  # JPEG baseline
        "1.2.840.10008.1.2.4.51",  # JPEG extended
        "1.2.840.10008.1.2.4.70",  # JPEG lossless SV1
        "1.2.840.10008.1.2.4.80",  # JPEG-LS lossless
        "1.2.840.10008.1.2.4.81",  # JPEG-LS near-lossless
        "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
        "1.2.840.10008.1.2.4.91",  # JPEG 2000
        "1.2.840.10008.1.2.5",  # RLE
    } <= syntaxes


def test_reader_finds_the_elements_pydicom_reads(corpus):
    """Our walk of the byte stream sees the same top-level elements, in order, as dcmread, and
    ends exactly at the end of the data set (so offsets and lengths are right)."""
    for doc in corpus:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(pydicom.data.get_testdata_file(doc.name, download=False))
        top = [h.tag for h in doc.elems if h.depth == 0 and h.kind in ("element", "sequence", "pixels")]
        assert top == [int(e.tag) for e in ds], doc.name
        assert [h.tag for h in doc.meta] == [int(e.tag) for e in ds.file_meta], doc.name
        last = doc.elems[-1]
        end = last.value_off + (0 if last.kind in ("sequence", "item", "delimiter") else last.length)
        assert end == len(doc.body), doc.name


def test_reader_sees_items_fragments_and_delimiters(corpus):
    by_name = {doc.name: doc for doc in corpus}
    rle = by_name["SC_rgb_rle_2frame.dcm"]  # PS3.5 A.4: offset table + one fragment per frame + delimiter
    assert [h.kind for h in rle.elems if h.depth == 1] == ["fragment"] * 3 + ["delimiter"]
    sr = by_name["test-SR.dcm"]
    assert sum(h.kind == "item" for h in sr.elems) > 10 and max(h.depth for h in sr.elems) >= 4
    implicit = by_name["rtplan.dcm"]  # implicit VR: sequences found without a dictionary
    assert sum(h.kind == "sequence" for h in implicit.elems) == 12
    assert by_name["image_dfl.dcm"].deflated and len(by_name["image_dfl.dcm"].body) > 0


def test_reader_never_raises_on_garbage(corpus):
    rng = random.Random(1)
    for doc in corpus:
        for _ in range(20):
            data = bytearray(doc.body[: rng.randrange(len(doc.body))])
            for _ in range(rng.randrange(1, 16)):
                if data:
                    data[rng.randrange(len(data))] = rng.randrange(256)
            fuzz.walk(bytes(data), 0, doc.explicit, doc.big)


def test_mutants_are_deterministic_and_mutated(corpus):
    """Mutant i of a seed is the same bytes every time, made alone; every kind of mutation
    changes every corpus file."""
    for index in range(0, 2 * len(corpus) * len(fuzz.MUTATIONS), 7):
        a, b = fuzz.mutant(corpus, SEED, index), fuzz.mutant(corpus, SEED, index)
        assert (a.data, a.desc) == (b.data, b.desc)
    for index in range(len(corpus) * len(fuzz.MUTATIONS)):
        m = fuzz.mutant(corpus, SEED, index)
        assert m.data != m.doc.raw, (index, m.desc)
    assert fuzz.mutant(corpus, SEED, 0).data != fuzz.mutant(corpus, SEED + 1, 0).data


def test_structural_mutations_hit_what_they_name(corpus):
    """A wrong transfer syntax is in the file meta; a corrupted length is read back by our reader."""
    doc = next(d for d in corpus if d.name == "CT_small.dcm")
    data, desc = fuzz.mut_wrong_ts(random.Random(3), doc)
    meta = fuzz.walk(data, 132, True, False, only_group=2)
    ts = next(h for h in meta if h.tag == fuzz.TS_TAG)
    assert data[ts.value_off : ts.value_off + ts.length].rstrip(b"\0").decode("latin-1") != doc.ts, desc
    data, desc = fuzz.mut_element_length(random.Random(5), doc)
    assert data != doc.raw and "->" in desc


def test_checks_find_orphans_and_patient_data(tmp_path, corpus):
    """The end-of-run checks can fail: a blob without a row, a row without its blob, a temp
    file, and a patient name in the log are all reported."""
    data = tmp_path / "data"
    (data / "blobs" / "ab").mkdir(parents=True)
    (data / "blobs" / ".tmp").mkdir()
    (data / "blobs" / "ab" / "abOrphan.dcm").write_bytes(b"x")
    (data / "blobs" / ".tmp" / "left.dcm").write_bytes(b"x")
    with sqlite3.connect(data / "dicom.db") as con:
        con.execute("CREATE TABLE dicom (id TEXT, dcm_blob TEXT, png_blob TEXT)")
        con.execute("INSERT INTO dicom VALUES ('cdKept', 'cd/cdKept.dcm', NULL)")
    con.close()
    found = fuzz.storage_check(data)
    assert found["orphan_blobs"] == ["blobs/ab/abOrphan.dcm"]
    assert found["rows_missing_blobs"] == ["cdKept: cd/cdKept.dcm"]
    assert found["temp_files"] == ["blobs/.tmp/left.dcm"]
    log = tmp_path / "server-0.log"
    ct = next(d for d in corpus if d.name == "CT_small.dcm")
    log.write_text(f"INFO fine\nERROR could not read {ct.phi['PatientName']}\n")
    hits = fuzz.phi_in_logs([log], corpus)
    assert "server-0.log:2 PatientName of CT_small.dcm" in hits
    assert all(hit.startswith("server-0.log:2 ") for hit in hits)


def test_live_server_survives_the_mutants(tmp_path):
    """Two rounds over every (file, mutation) pair through the HTTP API of a real server with
    small limits: no 5xx, no request over 60 s, /healthz after each mutant, peak RSS of the
    workers under DICOMSVC_WORKER_MEMORY, no orphans, no patient data in the log."""
    corpus = fuzz.load_corpus()
    n = 2 * len(corpus) * len(fuzz.MUTATIONS)
    report = fuzz.fuzz(SEED, n, tmp_path, fuzz.Settings(), clients=2, replay=10)
    if not fuzz.ok(report):
        import io

        out = io.StringIO()
        fuzz.print_summary(report, out)
        pytest.fail(out.getvalue())
    assert report["mutants"] == n and sum(report["statuses"]["POST /dicom"].values()) == n
