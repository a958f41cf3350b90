"""Configuration: read from the environment once, in ``create_app``, then passed down."""

import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

PREFIX = "DICOMSVC_"


@dataclass(frozen=True)
class Config:
    data_dir: Path
    import_root: Path
    host: str = "0.0.0.0"
    port: int = 8001
    max_upload_bytes: int = 4 * 1024**3
    log_level: str = "info"
    workers: int = 2  # worker processes for CPU work; 0 runs it in threads instead
    sync_limit: int = 100  # more files than this in one request: a background job
    max_archive_files: int = 20_000
    max_archive_bytes: int = 16 * 1024**3  # total uncompressed size of one archive
    max_zip_ratio: int = 1000  # uncompressed / compressed size of one archive member
    render_max_size: int = 2048  # largest width or height GET /image scales to
    thumbnail_size: int = 128  # DICOMweb /thumbnail without viewport: fits in this square (PS3.18 §10.4.1.1.4)
    qido_max_results: int = 1000  # most results one QIDO-RS answer carries (PS3.18 §8.3.4.4 limit)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API
    header_timeout: int = 10  # seconds a client has to send a request's headers (then 408 and closed)
    keepalive_timeout: int = 5  # seconds a kept-alive connection may stay idle between requests
    anonymize_always: bool = False  # DICOMSVC_ANONYMIZE=always: nothing identifiable is stored
    anon_secret: str = field(default="", repr=False)  # HMAC key for pseudonyms; never logged

    SECRETS = ("anon_secret",)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "dicom.db"

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def spool_dir(self) -> Path:
        """Uploaded input kept for background jobs (survives a restart, unlike blobs/.tmp)."""
        return self.data_dir / "spool"

    @classmethod
    def from_env(cls, env: os._Environ | dict | None = None) -> "Config":
        env = os.environ if env is None else env

        def get(name: str, default: str) -> str:
            return env.get(PREFIX + name, "") or default

        def get_int(name: str, default: int, minimum: int = 1) -> int:
            raw = get(name, str(default))
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{PREFIX}{name} must be an integer, got {raw!r}") from None
            if value < minimum:
                raise ValueError(f"{PREFIX}{name} must be at least {minimum}, got {value}")
            return value

        data_dir = Path(get("DATA_DIR", ".")).resolve()
        return cls(
            data_dir=data_dir,
            import_root=Path(get("IMPORT_ROOT", "./import")).resolve(),
            host=get("HOST", "0.0.0.0"),
            port=get_int("PORT", 8001),
            max_upload_bytes=get_int("MAX_UPLOAD_BYTES", 4 * 1024**3),
            log_level=get("LOG_LEVEL", "info").lower(),
            workers=get_int("WORKERS", usable_cpus(), minimum=0),
            sync_limit=get_int("SYNC_LIMIT", 100),
            max_archive_files=get_int("MAX_ARCHIVE_FILES", 20_000),
            max_archive_bytes=get_int("MAX_ARCHIVE_BYTES", 16 * 1024**3),
            max_zip_ratio=get_int("MAX_ZIP_RATIO", 1000),
            render_max_size=get_int("RENDER_MAX_SIZE", 2048),
            thumbnail_size=get_int("THUMBNAIL_SIZE", 128),
            qido_max_results=get_int("QIDO_MAX_RESULTS", 1000),
            cors_origins=tuple(o.strip() for o in get("CORS_ORIGINS", "").split(",") if o.strip()),
            header_timeout=get_int("HEADER_TIMEOUT", 10),
            keepalive_timeout=get_int("KEEPALIVE_TIMEOUT", 5),
            anonymize_always=_anonymize_mode(get("ANONYMIZE", "request")),
            anon_secret=get("ANON_SECRET", ""),
        )

    def log(self, logger: logging.Logger) -> None:
        """Log the settings once at start-up, secrets masked."""
        shown = {k: ("***" if v else "(none)") if k in self.SECRETS else v for k, v in asdict(self).items()}
        logger.info("dicomsvc config: %s", ", ".join(f"{k}={v}" for k, v in shown.items()))


def _anonymize_mode(raw: str) -> bool:
    mode = raw.strip().lower()
    if mode not in ("request", "always"):
        raise ValueError(f"{PREFIX}ANONYMIZE must be 'request' (the default) or 'always', got {raw!r}")
    return mode == "always"


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may use: its affinity mask, capped by a cgroup CPU quota
    (``cpus: 2`` in docker compose writes ``200000 100000`` to ``cpu.max``), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        count = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(count, 1)


def _cgroup_quota(root: Path) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us``/``cpu.cfs_period_us``)."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 or period <= 0 else quota / period
    except (OSError, ValueError):
        return None
