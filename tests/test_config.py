from pathlib import Path

import pytest

from dicomsvc.config import Config


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = Config.from_env({})
    assert config.data_dir == tmp_path and config.import_root == tmp_path / "import"
    assert (config.host, config.port) == ("0.0.0.0", 8001)
    assert config.db_path == tmp_path / "dicom.db" and config.blob_dir == tmp_path / "blobs"


def test_from_environment():
    config = Config.from_env({"DICOMSVC_DATA_DIR": "/srv/d", "DICOMSVC_PORT": "9000", "DICOMSVC_LOG_LEVEL": "DEBUG"})
    assert config.data_dir == Path("/srv/d") and config.port == 9000 and config.log_level == "debug"
    with pytest.raises(ValueError, match="DICOMSVC_PORT"):
        Config.from_env({"DICOMSVC_PORT": "eighty"})
    with pytest.raises(Exception):
        config.port = 1  # frozen


def test_workers_default_to_the_cpus_this_process_may_use(tmp_path, monkeypatch):
    from dicomsvc.config import usable_cpus

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    assert usable_cpus(tmp_path) == 8  # no cgroup files: the affinity mask decides
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # docker compose `cpus: 1.5`
    assert usable_cpus(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == 8
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3})  # taskset -c 3
    assert usable_cpus(tmp_path) == 1
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert usable_cpus(v1) == 2
    assert Config.from_env({}).workers == usable_cpus()


def test_thumbnail_size():
    assert Config.from_env({}).thumbnail_size == 128
    assert Config.from_env({"DICOMSVC_THUMBNAIL_SIZE": "64"}).thumbnail_size == 64
    with pytest.raises(ValueError, match="DICOMSVC_THUMBNAIL_SIZE"):
        Config.from_env({"DICOMSVC_THUMBNAIL_SIZE": "0"})


def test_database_url_selects_postgresql_and_its_password_is_never_logged(caplog):
    import logging

    base = {"DICOMSVC_DATA_DIR": "/data", "DICOMSVC_IMPORT_ROOT": "/import", "DICOMSVC_DATABASE_URL": ""}
    sqlite = Config.from_env(base)
    assert sqlite.database_url == "" and sqlite.database == Path("/data/dicom.db") and sqlite.database_pool == 8
    url = "postgresql://dicomsvc:s3cret-pw@db.example:5432/pacs"
    config = Config.from_env(base | {"DICOMSVC_DATABASE_URL": url, "DICOMSVC_DATABASE_POOL": "3"})
    assert (config.database, config.database_pool) == (url, 3)
    assert "s3cret" not in repr(config)
    with caplog.at_level(logging.INFO):
        config.log(logging.getLogger("test"))
    assert "s3cret" not in caplog.text and "postgresql://dicomsvc:***@db.example:5432/pacs" in caplog.text
    with pytest.raises(ValueError, match="DATABASE_URL"):
        Config.from_env(base | {"DICOMSVC_DATABASE_URL": "mysql://x@y/z"})


def test_job_lease_settings():
    config = Config.from_env({})
    assert (config.job_lease_seconds, config.job_heartbeat_seconds, config.job_poll_seconds) == (30, 10, 5)
    config = Config.from_env({"DICOMSVC_JOB_LEASE_SECONDS": "6", "DICOMSVC_JOB_POLL_SECONDS": "1"})
    assert (config.job_lease_seconds, config.job_heartbeat_seconds, config.job_poll_seconds) == (6, 2, 1)
    with pytest.raises(ValueError, match="DICOMSVC_JOB_HEARTBEAT_SECONDS"):  # a lease renewed too late
        Config.from_env({"DICOMSVC_JOB_LEASE_SECONDS": "10", "DICOMSVC_JOB_HEARTBEAT_SECONDS": "10"})
