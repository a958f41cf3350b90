"""Encryption at rest (dicomsvc.storage.crypt): the format, random access, tampering, the
service's flows with a key, and key rotation (``dicomsvc keys rotate``)."""

import argparse
import base64
import io
import logging
import os
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from starlette.testclient import TestClient

from app import create_app
from dicomfiles import make_ct, sample_file
from dicomsvc.cli import keys as keys_cli
from dicomsvc.config import Config
from dicomsvc.errors import DamagedBlob
from dicomsvc.storage import crypt
from dicomsvc.storage.blobs import BlobStore
from dicomsvc.storage.crypt import HEADER, Keyring, open_sealed, seal_bytes, seal_file
from phi_fixture import build_phi_dataset, to_bytes
from test_intake import wait_for

KEY_A, KEY_B, KEY_C = bytes(range(32)), bytes(range(1, 33)), bytes(range(2, 34))


def b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def write(tmp_path: Path, keyring: Keyring, object_id: str, data: bytes) -> Path:
    path = tmp_path / object_id.replace("/", "_")
    path.write_bytes(seal_bytes(keyring, object_id, data))
    return path


# The format ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096 + 5])
def test_round_trip_and_random_access(tmp_path, size):
    keyring = Keyring((KEY_A,), 4096)
    data = os.urandom(size)
    path = write(tmp_path, keyring, "aa/x.dcm", data)
    streamed = tmp_path / "streamed"
    with open(streamed, "wb") as out:
        seal_file(keyring, "aa/x.dcm", io.BytesIO(data), out)
    assert streamed.stat().st_size == path.stat().st_size == HEADER + size + 16 * max(1, -(-size // 4096))
    rng = random.Random(size)
    for sealed in (path, streamed):
        with open_sealed(sealed, keyring, "aa/x.dcm") as reader:
            assert reader.size == size and reader.read() == data and reader.read(5) == b""
            for _ in range(50):
                start, length = rng.randrange(size + 2), rng.randrange(9000)
                reader.seek(start)
                assert reader.read(length) == data[start : start + length]
                assert reader.tell() == min(start + length, max(size, start))
            buf = bytearray(size + 10)
            reader.seek(0)
            assert reader.readinto(buf) == size and bytes(buf[:size]) == data
            reader.seek(-min(size, 1), os.SEEK_END)
            assert reader.read() == data[-1:]


def test_a_read_decrypts_only_the_chunks_it_touches(tmp_path, monkeypatch):
    keyring = Keyring((KEY_A,), 64 * 1024)
    data = os.urandom(2 * 1024 * 1024)
    path = write(tmp_path, keyring, "aa/big.dcm", data)
    calls = []
    real = crypt._chunk_aad
    monkeypatch.setattr(crypt, "_chunk_aad", lambda oid, index, last: calls.append(index) or real(oid, index, last))
    with open_sealed(path, keyring, "aa/big.dcm") as reader:
        assert calls == [31]  # the final chunk, authenticating the size
        reader.seek(1024 * 1024 + 100)
        assert reader.read(300) == data[1024 * 1024 + 100 : 1024 * 1024 + 400]
        reader.seek(1024 * 1024)
        reader.read(10)  # the same chunk: kept
    assert calls == [31, 16]


def _damage(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def test_tampering_is_detected(tmp_path, caplog):
    keyring = Keyring((KEY_A,), 4096)
    data = b"PHIMARKER" * 2000  # 18 000 bytes: 5 chunks
    record = 4096 + 16

    def fresh(name="aa/x.dcm"):
        return write(tmp_path, keyring, name, data)

    def opened(path, object_id="aa/x.dcm", ring=keyring):
        with open_sealed(path, ring, object_id) as reader:
            return reader.read()

    assert opened(fresh()) == data
    # a flipped bit in the body: that chunk fails, the others still read
    path = fresh()
    _damage(path, HEADER + record + 7)
    with open_sealed(path, keyring, "aa/x.dcm") as reader:
        assert reader.read(4096) == data[:4096]
        with pytest.raises(DamagedBlob):
            reader.read(10)
    for offset in (0, 9, 12, 20, 33, 60):  # magic, chunk size, key id, object nonce, wrap nonce, wrapped key
        path = fresh()
        _damage(path, offset)
        with pytest.raises(DamagedBlob):
            opened(path)
    # cut at a chunk boundary, cut mid-chunk, a chunk added
    path = fresh()
    with open(path, "r+b") as fh:
        fh.truncate(HEADER + 3 * record)
    with pytest.raises(DamagedBlob):
        opened(path)
    path = fresh()
    with open(path, "r+b") as fh:
        fh.truncate(path.stat().st_size - 5)
    with pytest.raises(DamagedBlob):
        opened(path)
    # two chunks swapped within the object
    path = fresh()
    raw = bytearray(path.read_bytes())
    first, second = raw[HEADER : HEADER + record], raw[HEADER + record : HEADER + 2 * record]
    raw[HEADER : HEADER + 2 * record] = second + first
    path.write_bytes(bytes(raw))
    with open_sealed(path, keyring, "aa/x.dcm") as reader:
        with pytest.raises(DamagedBlob):
            reader.read(10)
    # a whole object in another's place, and a chunk from another object
    other = fresh("bb/y.dcm")
    with pytest.raises(DamagedBlob):
        opened(other, "aa/x.dcm")
    path = fresh()
    raw = bytearray(path.read_bytes())
    raw[HEADER : HEADER + record] = other.read_bytes()[HEADER : HEADER + record]
    path.write_bytes(bytes(raw))
    with open_sealed(path, keyring, "aa/x.dcm") as reader, pytest.raises(DamagedBlob):
        reader.read(10)
    # a master key the reader does not hold
    with pytest.raises(DamagedBlob):
        opened(fresh(), ring=Keyring((KEY_B,), 4096))
    assert "PHIMARKER" not in caplog.text and "aa/x.dcm" in caplog.text


def test_ciphertext_is_not_the_plaintext(tmp_path):
    keyring = Keyring((KEY_A,))
    data = b"\x89PNG\r\n\x1a\n" + b"DICM" * 100
    one, two = seal_bytes(keyring, "aa/x.png", data), seal_bytes(keyring, "aa/x.png", data)
    assert one[:8] == b"DSVCRYPT" and one != two  # a fresh data key and nonces each time
    assert b"DICM" not in one and b"PNG" not in one


def test_rewrap_changes_the_header_only(tmp_path):
    old, new = Keyring((KEY_A,), 4096), Keyring((KEY_B,), 4096)
    data = os.urandom(10_000)
    path = write(tmp_path, old, "aa/x.dcm", data)
    body = path.read_bytes()[HEADER:]
    both = Keyring((KEY_A, KEY_B), 4096)
    assert crypt.rewrap(path, both, "aa/x.dcm", KEY_B) is True
    assert crypt.rewrap(path, both, "aa/x.dcm", KEY_B) is False  # done already: skipped
    assert path.read_bytes()[HEADER:] == body
    with open_sealed(path, new, "aa/x.dcm") as reader:
        assert reader.read() == data
    with pytest.raises(DamagedBlob):
        open_sealed(path, old, "aa/x.dcm")


def test_keys_from_the_environment(tmp_path):
    assert Config.from_env({"DICOMSVC_ENCRYPTION_KEY": ""}).encryption_keys == ()  # "": also under DICOMSVC_TEST_ENCRYPTION
    assert Config.from_env({"DICOMSVC_ENCRYPTION_KEY": b64(KEY_A)}).encryption_keys == (KEY_A,)
    key_file = tmp_path / "keys"
    key_file.write_text(f"{b64(KEY_B)}\n\n{b64(KEY_A)}\n")
    assert Config.from_env({"DICOMSVC_ENCRYPTION_KEY_FILE": str(key_file)}).encryption_keys == (KEY_B, KEY_A)
    for bad in ("short", b64(b"x" * 31), "!!!!"):
        with pytest.raises(ValueError, match="32 random bytes"):
            Config.from_env({"DICOMSVC_ENCRYPTION_KEY": bad})
    with pytest.raises(ValueError, match="not both"):
        Config.from_env({"DICOMSVC_ENCRYPTION_KEY": b64(KEY_A), "DICOMSVC_ENCRYPTION_KEY_FILE": str(key_file)})
    assert "AAECAw" not in repr(Config.from_env({"DICOMSVC_ENCRYPTION_KEY": b64(KEY_A)}))


# The service with a key --------------------------------------------------------------------


def encrypted_config(tmp_path: Path, **env) -> Config:
    (tmp_path / "import").mkdir(exist_ok=True)
    return Config.from_env(
        {
            "DICOMSVC_DATA_DIR": str(tmp_path / "data"),
            "DICOMSVC_IMPORT_ROOT": str(tmp_path / "import"),
            "DICOMSVC_WORKERS": "0",
            "DICOMSVC_ENCRYPTION_KEY": b64(KEY_A),
            "DICOMSVC_ENCRYPTION_CHUNK_BYTES": "4096",  # several chunks even for small files
            **env,
        }
    )


def stored_files(config: Config) -> list[Path]:
    root = config.blob_dir
    return sorted(p for p in root.rglob("*") if p.is_file() and ".tmp" not in p.relative_to(root).parts)


def post(client, data: bytes) -> str:
    response = client.post("/dicom", content=data, headers={"content-type": "application/dicom"})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_the_service_encrypts_every_blob_and_reads_them_back(tmp_path):
    config = encrypted_config(tmp_path)
    ds, planted = build_phi_dataset()
    phi = to_bytes(ds)
    assert all(m.encode() in phi for m in planted.markers) and b"DICM" in phi
    buf = io.BytesIO()
    pixels = np.arange(40 * 50, dtype=np.int16).reshape(40, 50)
    ct = make_ct(pixels, NumberOfFrames=1)
    ct.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    with TestClient(create_app(config)) as client:
        phi_id, ct_id = post(client, phi), post(client, data)
        image = client.get(f"/image?id={ct_id}")
        assert image.status_code == 200 and image.content.startswith(b"\x89PNG")
        again = client.get(f"/image?id={ct_id}", headers={"If-None-Match": image.headers["etag"]})
        assert again.status_code == 304
        assert client.get(f"/image?id={phi_id}").content.startswith(b"\x89PNG")
        assert client.get(f"/tags?id={ct_id}").status_code == 200
        assert client.get(f"/tags?id={ct_id}&format=dicomjson").status_code == 200
        # the DICOM file as stored, whole and in ranges
        url = f"/dicom/{ct_id}/file"
        whole = client.get(url)
        assert whole.status_code == 200 and whole.content == data
        assert whole.headers["content-length"] == str(len(data))
        first = client.get(url, headers={"Range": "bytes=128-131"})
        assert (first.status_code, first.content) == (206, b"DICM")
        assert first.headers["content-range"] == f"bytes 128-131/{len(data)}"
        tail = client.get(url, headers={"Range": "bytes=-5000"})
        assert (tail.status_code, tail.content) == (206, data[-5000:])
        both = client.get(url, headers={"Range": "bytes=0-1,4090-4100"})
        assert both.status_code == 206 and data[4090:4101] in both.content
        assert client.get(url, headers={"Range": f"bytes={len(data)}-"}).status_code == 416
        # renderings (kept, encrypted), .npy, WADO-RS frames, instance and bulk data
        windowed = client.get(f"/image?id={ct_id}&window=40,400&frame=1&format=jpeg")
        assert windowed.status_code == 200 and windowed.content.startswith(b"\xff\xd8")
        assert client.get(f"/image?id={ct_id}&window=40,400&frame=1&format=jpeg").content == windowed.content
        npy = client.get(f"/dicom/{ct_id}/pixels")
        assert npy.status_code == 200 and np.array_equal(np.load(io.BytesIO(npy.content)), pixels)
        base = f"/dicomweb/studies/{ct.StudyInstanceUID}/series/{ct.SeriesInstanceUID}/instances/{ct.SOPInstanceUID}"
        frame = client.get(base + "/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream"})
        assert frame.status_code == 200 and pixels.tobytes() in frame.content
        instance = client.get(base, headers={"Accept": "multipart/related; type=application/dicom"})
        assert instance.status_code == 200 and data[132:] in instance.content
        bulk = client.get(f"/dicom/{ct_id}/bulk/7FE00010")
        assert bulk.status_code == 200 and bulk.content == pixels.tobytes()
        metadata = client.get(f"/dicomweb/studies/{ct.StudyInstanceUID}/metadata")
        assert metadata.status_code == 200
    files = stored_files(config)
    assert len(files) >= 5  # two DICOMs, two PNGs, a rendering
    assert any(".renderings" in str(p) for p in files)
    for path in files:
        raw = path.read_bytes()
        assert raw.startswith(b"DSVCRYPT"), path.name
        assert b"DICM" not in raw and b"\x89PNG" not in raw and b"\xff\xd8\xff" not in raw
        assert not any(m.encode() in raw for m in planted.markers)
        assert b"Test^Patient" not in raw


def test_a_damaged_blob_is_a_json_error_logged_without_patient_data(tmp_path, caplog):
    config = encrypted_config(tmp_path)
    ds, planted = build_phi_dataset()
    with TestClient(create_app(config), raise_server_exceptions=False) as client:
        instance_id = post(client, to_bytes(ds))
        blobs = BlobStore.of(config)
        dcm, png = blobs.path(BlobStore.key(instance_id, "dcm")), blobs.path(BlobStore.key(instance_id, "png"))
        _damage(png, HEADER + 20)
        _damage(dcm, HEADER + 200)
        with caplog.at_level(logging.ERROR):
            for url in (f"/image?id={instance_id}", f"/tags?id={instance_id}&format=dicomjson",
                        f"/dicom/{instance_id}/pixels", f"/image?id={instance_id}&window=1,2"):  # fmt: skip
                answer = client.get(url)
                assert answer.status_code == 422, (url, answer.status_code)
                assert answer.json()["error"] == "damaged_blob"
        _damage(dcm, 40)  # the header: refused at open, before an answer starts
        answer = client.get(f"/dicom/{instance_id}/file")
        assert answer.status_code == 422 and answer.json()["error"] == "damaged_blob"
    assert "integrity check" in caplog.text and instance_id in caplog.text
    assert not any(m in caplog.text for m in planted.markers)


def test_without_a_key_blobs_stay_plaintext(tmp_path):
    config = encrypted_config(tmp_path, DICOMSVC_ENCRYPTION_KEY="")
    data = sample_file("CT_small.dcm").read_bytes()
    with TestClient(create_app(config)) as client:
        instance_id = post(client, data)
    assert BlobStore(config.blob_dir).path(BlobStore.key(instance_id, "dcm")).read_bytes() == data


# Key rotation -------------------------------------------------------------------------------


def test_keys_rotate_is_resumable_and_rewrites_headers_only(tmp_path, monkeypatch, capsys):
    config = encrypted_config(tmp_path)
    with TestClient(create_app(config)) as client:
        ids = [post(client, sample_file(name).read_bytes()) for name in ("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm")]
        assert client.get(f"/image?id={ids[0]}&window=40,400").status_code == 200
    files = stored_files(config)
    bodies = {p: p.read_bytes()[HEADER:] for p in files}
    new_file, both_file = tmp_path / "new.key", tmp_path / "both.keys"
    new_file.write_text(b64(KEY_C) + "\n")
    both_file.write_text(f"{b64(KEY_C)}\n{b64(KEY_A)}\n")
    monkeypatch.setenv("DICOMSVC_DATA_DIR", str(config.data_dir))
    monkeypatch.setenv("DICOMSVC_ENCRYPTION_KEY", b64(KEY_A))
    args = argparse.Namespace(command="keys", action="rotate", new_key_file=new_file)

    class Interrupted(Exception):
        pass

    seen = []

    def stop_after_three(path):
        seen.append(path)
        if len(seen) == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        keys_cli.run(args, each=stop_after_three)
    new_id = crypt.key_id(KEY_C)
    under_new = [p for p in files if p.read_bytes()[12:20] == new_id]
    assert len(under_new) == 3 and len(files) > 3
    # meanwhile a service holding both keys reads every object
    with TestClient(create_app(encrypted_config(tmp_path, DICOMSVC_ENCRYPTION_KEY="",
                                                DICOMSVC_ENCRYPTION_KEY_FILE=str(both_file)))) as client:  # fmt: skip
        for instance_id in ids:
            assert client.get(f"/dicom/{instance_id}/file").status_code == 200
            assert client.get(f"/image?id={instance_id}").status_code == 200
    assert keys_cli.run(args) == 0
    assert f"re-wrapped {len(files) - 3}, already under the new key 3" in capsys.readouterr().out
    assert all(p.read_bytes()[12:20] == new_id for p in files)
    assert all(p.read_bytes()[HEADER:] == bodies[p] for p in files)  # bodies never rewritten
    new_only = encrypted_config(tmp_path, DICOMSVC_ENCRYPTION_KEY=b64(KEY_C))
    with TestClient(create_app(new_only)) as client:
        for name, instance_id in zip(("CT_small.dcm", "MR_small.dcm", "JPEG2000.dcm"), ids):
            assert client.get(f"/dicom/{instance_id}/file").content == sample_file(name).read_bytes()
        assert client.get(f"/image?id={ids[0]}&window=40,400").status_code == 200
    old_only = encrypted_config(tmp_path)
    with TestClient(create_app(old_only), raise_server_exceptions=False) as client:
        assert client.get(f"/image?id={ids[0]}").json()["error"] == "damaged_blob"
    assert pydicom.dcmread(sample_file("CT_small.dcm")).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian


# Spools: a job's input waiting on disk ---------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 3 * 4096, 20_000])
def test_a_sealing_writer_makes_one_object_of_any_pieces(tmp_path, size):
    keyring, data = Keyring((KEY_A,), 4096), random.Random(size).randbytes(size)
    path = tmp_path / "spooled"
    with crypt.SealingWriter(open(path, "xb"), keyring, "spool/x/part") as out:
        for start in range(0, size, 777):  # pieces that straddle chunk boundaries
            out.write(data[start : start + 777])
    chunks = max(1, -(-size // 4096))  # the last chunk shorter, or one empty chunk for nothing
    assert path.stat().st_size == HEADER + size + chunks * crypt.TAG
    with open_sealed(path, keyring, "spool/x/part") as reader:
        assert reader.read() == data


def test_a_jobs_spooled_input_is_sealed_until_the_job_runs(tmp_path, monkeypatch):
    """ZIP bodies, multipart parts and single bodies sent as background jobs wait in spool/
    encrypted (no planted marker, no DICOM/ZIP signature), and the job then stores them."""
    import zipfile

    from dicomsvc import jobs

    config = encrypted_config(tmp_path)
    ds, planted = build_phi_dataset()
    phi = to_bytes(ds)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w", zipfile.ZIP_STORED) as archive:  # stored: the markers stay visible
        archive.writestr("phi.dcm", phi)
    held, real = [], jobs._run_job

    async def hold(svc, job_id):  # the runner takes no job until the spools were looked at
        held.append(job_id)

    monkeypatch.setattr(jobs, "_run_job", hold)
    with TestClient(create_app(config)) as client:
        answers = [
            client.post("/dicom?async=1", content=zipped.getvalue(), headers={"content-type": "application/zip"}),
            client.post("/dicom?async=1", files={"file": ("phi.dcm", phi, "application/dicom")}),
            client.post("/dicom?async=1", content=phi, headers={"content-type": "application/dicom"}),
        ]
        assert [a.status_code for a in answers] == [202, 202, 202]
        spooled = sorted(p for p in config.spool_dir.rglob("*") if p.is_file())
        assert len(spooled) == 3
        for path in spooled:
            raw = path.read_bytes()
            assert raw.startswith(b"DSVCRYPT"), path.name
            assert b"DICM" not in raw and b"PK\x03\x04" not in raw
            assert not any(m.encode() in raw for m in planted.markers)
        monkeypatch.setattr(jobs, "_run_job", real)  # the runner takes the held jobs again (its own)
        for answer in answers:
            job = wait_for(client, answer.json()["status_url"])
            assert (job["status"], job["created"] + job["duplicates"], job["failed"]) == ("done", 1, 0), job
    assert not list(config.spool_dir.rglob("*.*"))  # the spools are gone with their jobs
