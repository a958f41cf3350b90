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
