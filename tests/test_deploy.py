"""docker-compose.yml and its configs (no docker here: the YAML is parsed, nginx's config checked by
nginx itself). The default profile stays the README's two services; the "scale" profile runs
PostgreSQL, SeaweedFS, two dicomsvc replicas and nginx, every image pinned."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
REPO = Path(__file__).resolve().parent.parent


def services() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())["services"]


def test_the_default_profile_is_unchanged():
    default = {name for name, service in services().items() if not service.get("profiles")}
    assert default == {"dicomsvc", "ohif"}  # `docker compose up --build` starts these two only


def test_the_scale_profile_pins_its_images_and_shares_index_bucket_and_secrets():
    scale = {name: s for name, s in services().items() if "scale" in s.get("profiles", ())}
    assert set(scale) == {"postgres", "seaweedfs", "dicomsvc-1", "dicomsvc-2", "loadbalancer"}
    for name, service in scale.items():
        image = service["image"]
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest" and any(c.isdigit() for c in tag), (name, image)
    one, two = scale["dicomsvc-1"], scale["dicomsvc-2"]
    for setting in ("DICOMSVC_DATABASE_URL", "DICOMSVC_BLOB_URL", "DICOMSVC_S3_ENDPOINT", "DICOMSVC_ANON_SECRET",
                    "DICOMSVC_ENCRYPTION_KEY", "DICOMSVC_IMPORT_ROOT"):  # fmt: skip
        assert one["environment"][setting] == two["environment"][setting], setting
    assert one["environment"]["DICOMSVC_DATABASE_URL"].startswith("postgresql://")
    assert one["environment"]["DICOMSVC_BLOB_URL"].startswith("s3://dicomsvc/")
    data = [next(v for v in s["volumes"] if v.endswith(":/data")) for s in (one, two)]
    assert data[0] != data[1], "replicas must not share a data directory (dicomsvc.lock)"
    bucket = next(a for a in scale["seaweedfs"]["command"] if a.startswith("-bucket="))
    assert bucket == "-bucket=dicomsvc"
    identities = json.loads((REPO / "deploy/seaweedfs/s3.json").read_text())["identities"]
    assert identities[0]["credentials"][0]["accessKey"] == one["environment"]["AWS_ACCESS_KEY_ID"]
    assert one["build"]["args"]["EXTRAS"] == "[postgres,s3]"


def test_the_load_balancer_config_is_valid_nginx(tmp_path):
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        pytest.skip("nginx is not installed")
    site = (REPO / "deploy/nginx/scale.conf").read_text()
    site = site.replace("dicomsvc-1:8001", "127.0.0.1:18001").replace("dicomsvc-2:8001", "127.0.0.1:18002")
    site = site.replace("listen 80;", "listen 127.0.0.1:18080;")
    (tmp_path / "site.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {tmp_path}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ access_log off; {temp} include {tmp_path}/site.conf; }}\n"
    )
    check = subprocess.run([nginx, "-t", "-e", str(tmp_path / "error.log"), "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
                           capture_output=True, text=True)  # fmt: skip
    assert check.returncode == 0, check.stderr
