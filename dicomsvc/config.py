"""Configuration: read from the environment once, in ``create_app``, then passed down."""

import base64
import binascii
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from . import netconfig
from .netconfig import NetworkConfig

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
    max_frame_bytes: int = 512 * 1024**2  # largest decoded frame; larger ones are refused unread
    worker_memory: int = 2 * 1024**3  # address space of each worker process (RLIMIT_AS); 0: none
    worker_timeout: int = 120  # seconds one task may take in a worker before it is killed; 0: none
    thumbnail_size: int = 128  # DICOMweb /thumbnail without viewport: fits in this square (PS3.18 §10.4.1.1.4)
    qido_max_results: int = 1000  # most results one QIDO-RS answer carries (PS3.18 §8.3.4.4 limit)
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API
    header_timeout: int = 10  # seconds a client has to send a request's headers (then 408 and closed)
    keepalive_timeout: int = 5  # seconds a kept-alive connection may stay idle between requests
    anonymize_always: bool = False  # DICOMSVC_ANONYMIZE=always: nothing identifiable is stored
    anon_secret: str = field(default="", repr=False)  # HMAC key for pseudonyms; never logged
    # Authentication and ownership (README "Authentication"); dicomsvc.identity, dicomsvc.auth
    auth: str = "none"  # none | token | oidc
    oidc_issuer: str = ""  # the provider's issuer URL (OpenID Connect Discovery 1.0 §4)
    oidc_audience: str = ""  # the "aud" an access token must carry (RFC 7519 §4.1.3)
    oidc_roles_claim: str = "realm_access.roles"  # dotted path to the roles in the token (Keycloak's)
    oidc_clock_skew: int = 60  # seconds of leeway on "exp" and "nbf" (RFC 7519 §4.1.4/§4.1.5)
    oidc_refetch_interval: int = 10  # least seconds between JWKS fetches for an unknown "kid"
    oidc_jwks_max_age: int = 3600  # seconds a fetched JWKS is used before it is fetched again
    oidc_http_timeout: int = 5  # seconds for fetching the discovery document or the JWKS
    visibility: str = "all"  # all | own: readers and uploaders see only what they uploaded
    metrics_auth: bool = False  # GET /metrics needs a token too
    # Logs, audit trail, readiness (README "Audit" and "Monitoring"); dicomsvc.logs, dicomsvc.audit
    log_format: str = "text"  # text | json (one object per line)
    log_file: Path | None = None  # also log to this file, rotated by size
    log_file_bytes: int = 10 * 1024**2  # a log file is rotated past this size
    log_file_count: int = 5  # rotated log files kept
    audit: bool = True  # record the audit trail (off only to measure what it costs)
    audit_file: Path | None = None  # also append the audit trail here, as JSON lines
    audit_flush_ms: int = 100  # audit records are written at least this often, in one transaction
    audit_batch: int = 500  # ... or as soon as this many are waiting
    audit_queue_max: int = 100_000  # records held in memory while the database refuses writes
    min_free_bytes: int = 1024**3  # /readyz is 503 below this much free space in the data directory
    # Resumable uploads, tus 1.0.0 (README "Resumable uploads (tus)"); dicomsvc.resumable
    tus_max_size: int = 4 * 1024**3  # Tus-Max-Size: the largest Upload-Length (default: max_upload_bytes)
    tus_max_incomplete: int = 10  # uploads one user may have still receiving at once
    tus_expiry: int = 24 * 3600  # seconds an upload may go without a PATCH before it is removed
    tus_sweep_interval: int = 300  # seconds between sweeps of expired uploads (also one at start)
    tus_idle_timeout: int = 60  # seconds a PATCH body may pause; then what arrived is kept, the request ends
    read_cache_bytes: int = 64 * 1024**2  # GET /image PNGs and /tags JSON kept in memory (LRU); 0: none
    # The index on PostgreSQL (README "Running at scale"); dicomsvc.storage.postgres. "": SQLite in data_dir
    database_url: str = field(default="", repr=False)  # postgresql://user:password@host:port/database
    database_pool: int = 8  # the server's PostgreSQL connections at most (the audit trail's: 2 more)
    # Encryption at rest (README "Encryption at rest"); dicomsvc.storage.crypt. The master keys, 32 bytes
    # each: the first wraps new objects, all unwrap (old ones while rotating). Empty: blobs in the clear
    encryption_keys: tuple[bytes, ...] = field(default=(), repr=False)
    encryption_chunk_bytes: int = 64 * 1024  # plaintext bytes per AES-GCM chunk of a new object
    # Blobs in an S3-compatible object store (README "S3-compatible storage"); dicomsvc.storage.objects.
    # "": the local folder data_dir/blobs as before. Credentials: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY
    blob_url: str = ""  # s3://bucket/prefix
    s3_endpoint: str = ""  # http(s)://host:port of the S3 API; "": AWS itself
    s3_region: str = "us-east-1"
    s3_multipart_bytes: int = 16 * 1024**2  # objects larger than this go up in parts of this size
    s3_timeout: int = 30  # seconds one request to the object store may take
    blob_cache_bytes: int = 1024**3  # with S3: local read-through copies kept at most (LRU)
    blob_cache_dir: Path | None = None  # with S3: where those copies live (default data_dir/blobs)
    blob_folders: str = "start"  # "start": every <aa>/ fan-out folder made when the store opens; "lazy": on first use
    sweep_grace_seconds: int = 3600  # the orphan sweep leaves blobs younger than this alone
    # Several replicas (README "Running at scale"); dicomsvc.jobs: a running job is leased by one replica
    job_lease_seconds: int = 30  # a job whose runner has not renewed its lease for this long is taken over
    job_heartbeat_seconds: int = 10  # how often the runner renews its lease (less than the lease)
    job_poll_seconds: int = 5  # how often a replica looks for jobs queued elsewhere (one indexed query)
    # DICOM networking (README "DICOM networking"); dicomsvc.dimse (pynetdicom, imported only when on)
    dimse_port: int | None = None  # DICOMSVC_DIMSE_PORT: the SCP's TCP port; None: off
    ae_title: str = "DICOMSVC"  # our AE title (PS3.5 §6.2 AE: at most 16 characters)
    network_config: NetworkConfig = field(default_factory=NetworkConfig)  # peers, destinations, rules
    dimse_max_associations: int = 10  # concurrent associations; more are rejected (A-ASSOCIATE-RJ, transient)
    dimse_max_pdu: int = 65536  # the largest P-DATA-TF PDU we receive (PS3.8 §9.3.1), 0: unlimited
    dimse_acse_timeout: int = 30  # seconds for association negotiation and release (ACSE)
    dimse_timeout: int = 60  # seconds to wait for the next DIMSE message of an association
    dimse_network_timeout: int = 60  # seconds without a byte from the peer before the association is aborted
    dimse_max_results: int = 10_000  # C-FIND matches answered at most (more: the first ones, then success)
    dimse_max_retrieve: int = 100_000  # instances one C-GET or C-MOVE may retrieve (more: refused, 0xA701)
    destination_check_timeout: int = 5  # seconds GET /destinations waits for each destination's answer
    # Sending (POST /dicom/send, forwarding; dicomsvc.sending)
    send_batch: int = 50  # instances per association (DIMSE) or STOW-RS request
    send_batch_bytes: int = 256 * 1024**2  # a STOW-RS request's body at most (a batch past it goes in several)
    send_retries: int = 5  # attempts after the first for an instance that failed transiently
    send_backoff_seconds: int = 1  # the first retry's wait; doubled each time (exponential backoff)
    send_backoff_max_seconds: int = 60  # the longest wait between attempts
    send_max_instances: int = 100_000  # instances one POST /dicom/send may name or select (more: 413)
    send_timeout: int = 60  # seconds a STOW-RS destination has to connect and to answer
    # Forwarding by routing rules (README "Routing rules"); dicomsvc.forwarding
    forward_batch: int = 50  # queued forwards of one destination sent at a time (one association / request)
    forward_backoff_seconds: int = 5  # the wait after a forward's first transient failure; doubled each time
    forward_max_backoff_seconds: int = 600  # the longest wait between attempts (retried for ever)
    forward_poll_seconds: int = 5  # how often a replica looks for forwards queued elsewhere
    forward_lease_seconds: int = 120  # a batch being sent is this replica's for this long, renewed meanwhile
    forward_keep_seconds: int = 30 * 86400  # sent forwards are forgotten after this (0: kept for ever)
    # Clinical CSVs joined to studies (README "Clinical data (CSV) joined to studies"); dicomsvc.datasets
    dataset_max_bytes: int = 64 * 1024**2  # the largest CSV POST /datasets takes (413 past it)
    dataset_max_rows: int = 100_000  # data rows of one CSV at most (413)
    dataset_max_columns: int = 1_000  # columns of one CSV at most (413)
    export_result_seconds: int = 86_400  # a dataset export's ZIP is kept this long after its job finished (then 410)
    # The page in the browser at / (README "The page in the browser"); dicomsvc/http/page.py
    ohif_url: str = ""  # OHIF Viewer's address: the page links each study to <ohif_url>/viewer; "": no links
    page_resumable_bytes: int = 8 * 1024**2  # the page sends files larger than this resumably (tus, /uploads/)
    page_chunk_bytes: int = 8 * 1024**2  # the page's tus PATCH size
    page_batch_bytes: int = 64 * 1024**2  # the page's multipart POST /dicom requests carry at most this much

    SECRETS = ("anon_secret", "encryption_keys")

    @property
    def db_path(self) -> Path:
        return self.data_dir / "dicom.db"

    @property
    def database(self) -> Path | str:
        """Where the index is: DICOMSVC_DATABASE_URL, or the SQLite file in the data directory."""
        return self.database_url or self.db_path

    @property
    def blob_dir(self) -> Path:
        """The blob folder; with S3, the local read-through cache (DICOMSVC_BLOB_CACHE_DIR)."""
        return self.blob_cache_dir if self.blob_url and self.blob_cache_dir else self.data_dir / "blobs"

    @property
    def spool_dir(self) -> Path:
        """Uploaded input kept for background jobs (survives a restart, unlike blobs/.tmp)."""
        return self.data_dir / "spool"

    @property
    def resumable_dir(self) -> Path:
        """The bytes of resumable (tus) uploads still to be ingested, one file each."""
        return self.data_dir / "uploads"

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
            max_frame_bytes=get_int("MAX_FRAME_BYTES", 512 * 1024**2),
            worker_memory=get_int("WORKER_MEMORY", 2 * 1024**3, minimum=0),
            worker_timeout=get_int("WORKER_TIMEOUT", 120, minimum=0),
            thumbnail_size=get_int("THUMBNAIL_SIZE", 128),
            qido_max_results=get_int("QIDO_MAX_RESULTS", 1000),
            cors_origins=tuple(o.strip() for o in get("CORS_ORIGINS", "").split(",") if o.strip()),
            header_timeout=get_int("HEADER_TIMEOUT", 10),
            keepalive_timeout=get_int("KEEPALIVE_TIMEOUT", 5),
            anonymize_always=_anonymize_mode(get("ANONYMIZE", "request")),
            anon_secret=get("ANON_SECRET", ""),
            **_auth_settings(get, get_int),
            **_observability_settings(get, get_int),
            **_resumable_settings(get_int, get_int("MAX_UPLOAD_BYTES", 4 * 1024**3)),
            database_url=_database_url(get("DATABASE_URL", "").strip()),
            database_pool=get_int("DATABASE_POOL", 8),
            encryption_keys=_encryption_keys(get),
            encryption_chunk_bytes=get_int("ENCRYPTION_CHUNK_BYTES", 64 * 1024, minimum=4096),
            **_object_store_settings(get, get_int),
            **_job_settings(get_int),
            **_dimse_settings(get, get_int),
            dataset_max_bytes=get_int("DATASET_MAX_BYTES", 64 * 1024**2),
            dataset_max_rows=get_int("DATASET_MAX_ROWS", 100_000),
            dataset_max_columns=get_int("DATASET_MAX_COLUMNS", 1_000),
            export_result_seconds=get_int("EXPORT_RESULT_SECONDS", 86_400),
            ohif_url=_ohif_url(get("OHIF_URL", "")),
            page_resumable_bytes=get_int("PAGE_RESUMABLE_BYTES", 8 * 1024**2),
            page_chunk_bytes=get_int("PAGE_CHUNK_BYTES", 8 * 1024**2),
            page_batch_bytes=get_int("PAGE_BATCH_BYTES", 64 * 1024**2),
        )

    def log(self, logger: logging.Logger) -> None:
        """Log the settings once at start-up, secrets masked."""
        shown = {k: ("***" if v else "(none)") if k in self.SECRETS else v for k, v in asdict(self).items()}
        shown["database_url"] = _masked_url(self.database_url) or "(none: SQLite)"
        net = self.network_config  # names and counts only: destinations may hold tokens
        shown["network_config"] = f"{len(net.peers)} peer(s), {len(net.destinations)} destination(s), {len(net.rules)} rule(s)"
        shown["blob_url"] = self.blob_url or "(none: the local folder)"
        if self.blob_url:  # the credentials come from the environment: say which, never the secret
            shown["s3_access_key_id"] = os.environ.get("AWS_ACCESS_KEY_ID") or "(none)"
            shown["s3_secret_access_key"] = "***" if os.environ.get("AWS_SECRET_ACCESS_KEY") else "(none)"
        logger.info("dicomsvc config: %s", ", ".join(f"{k}={v}" for k, v in shown.items()))


def _choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ValueError(f"{PREFIX}{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _auth_settings(get, get_int) -> dict:
    """DICOMSVC_AUTH, DICOMSVC_OIDC_*, DICOMSVC_VISIBILITY, DICOMSVC_METRICS_AUTH."""
    auth = _choice("AUTH", get("AUTH", "none"), ("none", "token", "oidc"))
    issuer, audience = get("OIDC_ISSUER", "").strip().rstrip("/"), get("OIDC_AUDIENCE", "").strip()
    if auth == "oidc" and not (issuer and audience):
        raise ValueError(f"{PREFIX}AUTH=oidc needs {PREFIX}OIDC_ISSUER and {PREFIX}OIDC_AUDIENCE")
    roles_claim = get("OIDC_ROLES_CLAIM", "realm_access.roles").strip()
    if not all(roles_claim.split(".")):
        raise ValueError(f"{PREFIX}OIDC_ROLES_CLAIM must be a dotted claim path, got {roles_claim!r}")
    return {
        "auth": auth,
        "oidc_issuer": issuer,
        "oidc_audience": audience,
        "oidc_roles_claim": roles_claim,
        "oidc_clock_skew": get_int("OIDC_CLOCK_SKEW", 60, minimum=0),
        "oidc_refetch_interval": get_int("OIDC_REFETCH_INTERVAL", 10, minimum=0),
        "oidc_jwks_max_age": get_int("OIDC_JWKS_MAX_AGE", 3600),
        "oidc_http_timeout": get_int("OIDC_HTTP_TIMEOUT", 5),
        "visibility": _choice("VISIBILITY", get("VISIBILITY", "all"), ("all", "own")),
        "metrics_auth": _choice("METRICS_AUTH", get("METRICS_AUTH", "false"), ("true", "false")) == "true",
    }


def _observability_settings(get, get_int) -> dict:
    """DICOMSVC_LOG_FORMAT, DICOMSVC_LOG_FILE[_BYTES|_COUNT], DICOMSVC_AUDIT[_FILE|_FLUSH_MS|_BATCH|
    _QUEUE_MAX], DICOMSVC_MIN_FREE_BYTES, DICOMSVC_READ_CACHE_BYTES."""
    log_file, audit_file = get("LOG_FILE", "").strip(), get("AUDIT_FILE", "").strip()
    return {
        "log_format": _choice("LOG_FORMAT", get("LOG_FORMAT", "text"), ("text", "json")),
        "log_file": Path(log_file).resolve() if log_file else None,
        "log_file_bytes": get_int("LOG_FILE_BYTES", 10 * 1024**2),
        "log_file_count": get_int("LOG_FILE_COUNT", 5, minimum=0),
        "audit": _choice("AUDIT", get("AUDIT", "true"), ("true", "false")) == "true",
        "audit_file": Path(audit_file).resolve() if audit_file else None,
        "audit_flush_ms": get_int("AUDIT_FLUSH_MS", 100),
        "audit_batch": get_int("AUDIT_BATCH", 500),
        "audit_queue_max": get_int("AUDIT_QUEUE_MAX", 100_000),
        "min_free_bytes": get_int("MIN_FREE_BYTES", 1024**3, minimum=0),
        "read_cache_bytes": get_int("READ_CACHE_BYTES", 64 * 1024**2, minimum=0),
    }


def _resumable_settings(get_int, max_upload_bytes: int) -> dict:
    """DICOMSVC_TUS_MAX_SIZE, _MAX_INCOMPLETE, _EXPIRY, _SWEEP_INTERVAL, _IDLE_TIMEOUT."""
    return {
        "tus_max_size": get_int("TUS_MAX_SIZE", max_upload_bytes),
        "tus_max_incomplete": get_int("TUS_MAX_INCOMPLETE", 10),
        "tus_expiry": get_int("TUS_EXPIRY", 24 * 3600),
        "tus_sweep_interval": get_int("TUS_SWEEP_INTERVAL", 300),
        "tus_idle_timeout": get_int("TUS_IDLE_TIMEOUT", 60),
    }


def _job_settings(get_int) -> dict:
    """DICOMSVC_JOB_LEASE_SECONDS, _HEARTBEAT_SECONDS, _POLL_SECONDS."""
    lease = get_int("JOB_LEASE_SECONDS", 30, minimum=2)
    heartbeat = get_int("JOB_HEARTBEAT_SECONDS", min(10, lease // 3) or 1)
    if heartbeat >= lease:
        raise ValueError(
            f"{PREFIX}JOB_HEARTBEAT_SECONDS ({heartbeat}) must be less than {PREFIX}JOB_LEASE_SECONDS ({lease})"
        )
    return {"job_lease_seconds": lease, "job_heartbeat_seconds": heartbeat, "job_poll_seconds": get_int("JOB_POLL_SECONDS", 5)}


def _object_store_settings(get, get_int) -> dict:
    """DICOMSVC_BLOB_URL, DICOMSVC_S3_ENDPOINT/_REGION/_MULTIPART_BYTES/_TIMEOUT,
    DICOMSVC_BLOB_CACHE_BYTES/_DIR, DICOMSVC_SWEEP_GRACE_SECONDS."""
    url, endpoint = get("BLOB_URL", "").strip(), get("S3_ENDPOINT", "").strip().rstrip("/")
    if url:
        scheme, _, rest = url.partition("://")
        if scheme != "s3" or not rest.split("/", 1)[0]:
            raise ValueError(f"{PREFIX}BLOB_URL must be s3://bucket[/prefix], got {url!r}")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"{PREFIX}S3_ENDPOINT must be an http:// or https:// URL, got {endpoint!r}")
    cache_dir = get("BLOB_CACHE_DIR", "").strip()
    return {
        "blob_url": url.rstrip("/"),
        "s3_endpoint": endpoint,
        "s3_region": get("S3_REGION", "us-east-1").strip(),
        # S3 parts are 5 MiB at least (but the last) and 10,000 at most: 16 MiB parts reach 156 GiB
        "s3_multipart_bytes": get_int("S3_MULTIPART_BYTES", 16 * 1024**2, minimum=5 * 1024**2),
        "s3_timeout": get_int("S3_TIMEOUT", 30),
        "blob_cache_bytes": get_int("BLOB_CACHE_BYTES", 1024**3, minimum=0),
        "blob_folders": _choice("BLOB_FOLDERS", get("BLOB_FOLDERS", "start"), ("start", "lazy")),
        "blob_cache_dir": Path(cache_dir).resolve() if cache_dir else None,
        "sweep_grace_seconds": get_int("SWEEP_GRACE_SECONDS", 3600, minimum=0),
    }


def _dimse_settings(get, get_int) -> dict:
    """DICOMSVC_DIMSE_PORT, DICOMSVC_AE_TITLE, DICOMSVC_NETWORK_CONFIG, DICOMSVC_DIMSE_* limits,
    DICOMSVC_DESTINATION_CHECK_TIMEOUT, DICOMSVC_SEND_* (sending), DICOMSVC_FORWARD_* (routing rules)."""
    port = get_int("DIMSE_PORT", 0, minimum=0)
    if port > 65535:
        raise ValueError(f"{PREFIX}DIMSE_PORT must be a TCP port (1-65535), or unset for none")
    path = get("NETWORK_CONFIG", "").strip()
    return {
        "dimse_port": port or None,
        "ae_title": netconfig.ae_title(get("AE_TITLE", "DICOMSVC"), f"{PREFIX}AE_TITLE"),
        "network_config": netconfig.load(Path(path), f"{PREFIX}NETWORK_CONFIG") if path else NetworkConfig(),
        "dimse_max_associations": get_int("DIMSE_MAX_ASSOCIATIONS", 10),
        "dimse_max_pdu": get_int("DIMSE_MAX_PDU", 65536, minimum=0),
        "dimse_acse_timeout": get_int("DIMSE_ACSE_TIMEOUT", 30),
        "dimse_timeout": get_int("DIMSE_TIMEOUT", 60),
        "dimse_network_timeout": get_int("DIMSE_NETWORK_TIMEOUT", 60),
        "dimse_max_results": get_int("DIMSE_MAX_RESULTS", 10_000),
        "dimse_max_retrieve": get_int("DIMSE_MAX_RETRIEVE", 100_000),
        "destination_check_timeout": get_int("DESTINATION_CHECK_TIMEOUT", 5),
        "send_batch": get_int("SEND_BATCH", 50),
        "send_batch_bytes": get_int("SEND_BATCH_BYTES", 256 * 1024**2),
        "send_retries": get_int("SEND_RETRIES", 5, minimum=0),
        "send_backoff_seconds": get_int("SEND_BACKOFF_SECONDS", 1, minimum=0),
        "send_backoff_max_seconds": get_int("SEND_BACKOFF_MAX_SECONDS", 60, minimum=0),
        "send_max_instances": get_int("SEND_MAX_INSTANCES", 100_000),
        "send_timeout": get_int("SEND_TIMEOUT", 60),
        "forward_batch": get_int("FORWARD_BATCH", 50),
        "forward_backoff_seconds": get_int("FORWARD_BACKOFF_SECONDS", 5),
        "forward_max_backoff_seconds": get_int("FORWARD_MAX_BACKOFF_SECONDS", 600),
        "forward_poll_seconds": get_int("FORWARD_POLL_SECONDS", 5),
        "forward_lease_seconds": get_int("FORWARD_LEASE_SECONDS", 120, minimum=3),
        "forward_keep_seconds": get_int("FORWARD_KEEP_SECONDS", 30 * 86400, minimum=0),
    }


def _encryption_keys(get) -> tuple[bytes, ...]:
    """DICOMSVC_ENCRYPTION_KEY (one key, base64) or DICOMSVC_ENCRYPTION_KEY_FILE (one base64 key a
    line: the first is current, the others still unwrap, for ``dicomsvc keys rotate``)."""
    inline, path = get("ENCRYPTION_KEY", "").strip(), get("ENCRYPTION_KEY_FILE", "").strip()
    if inline and path:
        raise ValueError(f"set {PREFIX}ENCRYPTION_KEY or {PREFIX}ENCRYPTION_KEY_FILE, not both")
    if inline:
        return (parse_key(inline, f"{PREFIX}ENCRYPTION_KEY"),)
    if not path:
        return ()
    try:
        lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    except OSError as exc:
        raise ValueError(f"{PREFIX}ENCRYPTION_KEY_FILE cannot be read ({exc.strerror})") from None
    if not lines:
        raise ValueError(f"{PREFIX}ENCRYPTION_KEY_FILE holds no key")
    keys = tuple(parse_key(line, f"each line of {PREFIX}ENCRYPTION_KEY_FILE") for line in lines)
    return tuple(dict.fromkeys(keys))


def parse_key(text: str | bytes, where: str) -> bytes:
    """A master key: 32 bytes in base64 (standard or URL-safe alphabet)."""
    raw = text.strip() if isinstance(text, bytes) else text.strip().encode()
    try:
        key = base64.b64decode(raw.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where} must be 32 random bytes in base64") from None
    if len(key) != 32:
        raise ValueError(f"{where} must be 32 random bytes in base64 (it holds {len(key)} bytes)")
    return key


def _database_url(url: str) -> str:
    """DICOMSVC_DATABASE_URL: empty (SQLite) or a libpq URL (postgresql:// or postgres://)."""
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise ValueError(f"{PREFIX}DATABASE_URL must be a postgresql:// URL, got one starting {url.split(':', 1)[0]!r}")
    return url


def _masked_url(url: str) -> str:
    """The URL with its password, if any, replaced by ***."""
    scheme, sep, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not at or ":" not in auth:
        return url
    return f"{scheme}{sep}{auth.split(':', 1)[0]}:***@{host}"


def _ohif_url(raw: str) -> str:
    """DICOMSVC_OHIF_URL: an http(s) URL without credentials, query or fragment (the page shows it
    to anyone, and builds ``<url>/viewer?StudyInstanceUIDs=...`` from it); "": no OHIF links."""
    url = raw.strip().rstrip("/")
    if not url:
        return ""
    scheme, sep, rest = url.partition("://")
    host = rest.split("/", 1)[0]
    if scheme.lower() not in ("http", "https") or not sep or not host or "@" in host \
            or any(c in url for c in "?#\"'<> \\"):
        raise ValueError(f"{PREFIX}OHIF_URL must be an http(s) URL without credentials, query or fragment")
    return url


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
