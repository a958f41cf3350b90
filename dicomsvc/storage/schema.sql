-- dicomsvc schema. Applied at every start-up; every statement is idempotent.

-- One row per stored instance.
CREATE TABLE IF NOT EXISTS dicom (
    pk                  INTEGER PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,        -- shortuuid, the public id
    sop_instance_uid    TEXT NOT NULL,               -- (0008,0018)
    pixel_hash          TEXT NOT NULL,               -- 'xxh3:' + XXH3-128 hex of the pixel data value (older rows: SHA-256 hex); '' when none
    sop_class_uid       TEXT,                        -- (0008,0016)
    study_instance_uid  TEXT,                        -- (0020,000D)
    series_instance_uid TEXT,                        -- (0020,000E)
    patient_id          TEXT,                        -- (0010,0020)
    patient_name        TEXT,                        -- (0010,0010)
    patient_sex         TEXT,                        -- (0010,0040)
    patient_birth_date  TEXT,                        -- (0010,0030)
    study_date          TEXT,                        -- (0008,0020)
    study_description   TEXT,                        -- (0008,1030)
    accession_number    TEXT,                        -- (0008,0050)
    modality            TEXT,                        -- (0008,0060)
    transfer_syntax_uid TEXT,                        -- (0002,0010)
    rows                INTEGER,                     -- (0028,0010)
    columns             INTEGER,                     -- (0028,0011)
    frames              INTEGER,                     -- (0028,0008), 1 when absent
    bits_allocated      INTEGER,                     -- (0028,0100)
    bits_stored         INTEGER,                     -- (0028,0101)
    photometric         TEXT,                        -- (0028,0004)
    has_pixels          INTEGER NOT NULL,
    dcm_blob            TEXT NOT NULL,               -- blob key of the stored DICOM file
    dcm_bytes           INTEGER NOT NULL,
    png_blob            TEXT,                        -- blob key of the frame-1 PNG; NULL when none
    png_bytes           INTEGER,
    render_error        TEXT,                        -- why there is no PNG for pixel data
    source              TEXT NOT NULL,               -- where it came from (the import path)
    anonymized          INTEGER NOT NULL DEFAULT 0,  -- stored as anonymized (PS3.15 Basic profile)
    anonymized_from     TEXT,                        -- POST /dicom/{id}/anonymize: the original's id
    created_at          TEXT NOT NULL,               -- ISO 8601, UTC
    -- For DICOMweb (QIDO-RS, PS3.18 Table 10.6.1-5 keys, Tables 10.6.3-3/4/5 return attributes)
    study_time          TEXT,                        -- (0008,0030)
    study_id            TEXT,                        -- (0020,0010)
    referring_physician_name TEXT,                   -- (0008,0090)
    timezone_offset     TEXT,                        -- (0008,0201) Timezone Offset From UTC
    series_number       INTEGER,                     -- (0020,0011)
    series_description  TEXT,                        -- (0008,103E)
    pps_start_date      TEXT,                        -- (0040,0244) Performed Procedure Step Start Date
    pps_start_time      TEXT,                        -- (0040,0245) Performed Procedure Step Start Time
    instance_number     INTEGER,                     -- (0020,0013)
    uploaded_by         TEXT,                        -- the user who stored it (NULL: DICOMSVC_AUTH=none)
    -- Posting the same instance (same SOP Instance UID, same pixels) again stores nothing.
    UNIQUE (sop_instance_uid, pixel_hash)
);
CREATE INDEX IF NOT EXISTS dicom_study ON dicom (study_instance_uid);
CREATE INDEX IF NOT EXISTS dicom_series ON dicom (series_instance_uid);
CREATE INDEX IF NOT EXISTS dicom_patient ON dicom (patient_id);
-- Ownership: /users/{user}/uploads, ?mine=true, DICOMSVC_VISIBILITY=own
CREATE INDEX IF NOT EXISTS dicom_uploaded_by ON dicom (uploaded_by, study_instance_uid, series_instance_uid);
-- Search filters (GET /dicom): each index also orders by pk, so "newest first" needs no sort.
CREATE INDEX IF NOT EXISTS dicom_sop ON dicom (sop_instance_uid);
CREATE INDEX IF NOT EXISTS dicom_modality ON dicom (modality);
CREATE INDEX IF NOT EXISTS dicom_study_date ON dicom (study_date);
CREATE INDEX IF NOT EXISTS dicom_accession ON dicom (accession_number);
-- DICOMweb: a study's or series' instances (QIDO-RS, metadata), counted by SOP Instance UID.
CREATE INDEX IF NOT EXISTS dicom_series_sop ON dicom (study_instance_uid, series_instance_uid, sop_instance_uid);
-- Dropped: every index is one more b-tree each ingest writes (issue 12), and no query reads
-- dicom_created (created_at). dicom_sop stays though UNIQUE (sop_instance_uid, pixel_hash) starts
-- with the same column: without it SQLite's planner takes dicom_uploaded_by for a QIDO-RS search by
-- SOP Instance UID under DICOMSVC_VISIBILITY=own (all the owner's instances read). The plans are
-- checked by tests/test_storage.py.
DROP INDEX IF EXISTS dicom_created;

-- Each instance's DICOM JSON (PS3.18 Annex F), made at ingest: WADO-RS metadata is served from
-- here, never by re-reading files. BulkDataURIs are stored relative to the service root
-- ("/dicomweb/studies/..."); answers make them absolute for the host the client used.
CREATE TABLE IF NOT EXISTS dicom_json (
    dicom_pk INTEGER PRIMARY KEY REFERENCES dicom (pk) ON DELETE CASCADE,
    metadata TEXT NOT NULL
);

-- Studies and series (dicomsvc/storage/studies.py): kept right in the same transaction as every
-- insert and delete of an instance. Attributes are those of the newest instance (rep_pk); the
-- counts and ModalitiesInStudy (PS3.4 C.3.4) are aggregates. revision changes with every change
-- of the study or series (a strong ETag for its metadata).
CREATE TABLE IF NOT EXISTS study (
    pk                       INTEGER PRIMARY KEY,
    study_instance_uid       TEXT NOT NULL UNIQUE,   -- (0020,000D)
    rep_pk                   INTEGER NOT NULL,       -- dicom.pk the attributes come from
    patient_id               TEXT,                   -- (0010,0020)
    patient_name             TEXT,                   -- (0010,0010)
    patient_birth_date       TEXT,                   -- (0010,0030)
    patient_sex              TEXT,                   -- (0010,0040)
    study_date               TEXT,                   -- (0008,0020)
    study_time               TEXT,                   -- (0008,0030)
    accession_number         TEXT,                   -- (0008,0050)
    referring_physician_name TEXT,                   -- (0008,0090)
    study_id                 TEXT,                   -- (0020,0010)
    study_description        TEXT,                   -- (0008,1030)
    timezone_offset          TEXT,                   -- (0008,0201)
    modalities               TEXT,                   -- (0008,0061) Modalities in Study, '\'-joined, sorted
    series_count             INTEGER NOT NULL,       -- (0020,1206) Number of Study Related Series
    instance_count           INTEGER NOT NULL,       -- (0020,1208) Number of Study Related Instances
    revision                 INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS study_by_patient ON study (patient_id);
CREATE INDEX IF NOT EXISTS study_by_date ON study (study_date, study_time);
CREATE INDEX IF NOT EXISTS study_by_accession ON study (accession_number);
CREATE TABLE IF NOT EXISTS series (
    pk                  INTEGER PRIMARY KEY,
    study_instance_uid  TEXT NOT NULL,               -- (0020,000D)
    series_instance_uid TEXT NOT NULL,               -- (0020,000E)
    rep_pk              INTEGER NOT NULL,            -- dicom.pk the attributes come from
    modality            TEXT,                        -- (0008,0060)
    series_number       INTEGER,                     -- (0020,0011)
    series_description  TEXT,                        -- (0008,103E)
    pps_start_date      TEXT,                        -- (0040,0244)
    pps_start_time      TEXT,                        -- (0040,0245)
    instance_count      INTEGER NOT NULL,            -- (0020,1209) Number of Series Related Instances
    revision            INTEGER NOT NULL,
    UNIQUE (study_instance_uid, series_instance_uid)
);
CREATE INDEX IF NOT EXISTS series_by_uid ON series (series_instance_uid);
CREATE INDEX IF NOT EXISTS series_by_modality ON series (modality);
-- One counter: every study or series change takes the next value as its revision.
CREATE TABLE IF NOT EXISTS revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO revision (id, value) VALUES (1, 0);

-- The tag dictionary, shared by all instances: one row per (tag, VR, keyword).
CREATE TABLE IF NOT EXISTS tag (
    id      INTEGER PRIMARY KEY,
    tag     INTEGER NOT NULL,                        -- (gggg,eeee) as 0xggggeeee
    vr      TEXT NOT NULL,
    keyword TEXT NOT NULL,                           -- '' for private and unknown tags
    UNIQUE (tag, vr, keyword)
);

-- Per-instance values, in file order (id order), sequences as parent/item.
CREATE TABLE IF NOT EXISTS dicom_tag (
    id        INTEGER PRIMARY KEY,
    dicom_pk  INTEGER NOT NULL REFERENCES dicom (pk) ON DELETE CASCADE,
    tag_id    INTEGER NOT NULL REFERENCES tag (id),
    parent_id INTEGER,                               -- dicom_tag.id of the sequence row
    item      INTEGER,                               -- 0-based item index within the parent
    value     TEXT,                                  -- NULL for binary values and sequences
    nbytes    INTEGER                                -- byte count of a binary value
);
-- GET /tags is one scan of this index. In SQLite an index entry ends with the row id, which id
-- is, so (dicom_pk) alone keeps an instance's rows in id order: (dicom_pk, id), as databases made
-- before issue 12 have it, held id twice an entry, a quarter more pages to write at each ingest.
CREATE INDEX IF NOT EXISTS dicom_tag_by_dicom ON dicom_tag (dicom_pk);

-- Background imports: one row per job, one per file in it (see dicomsvc/jobs.py).
CREATE TABLE IF NOT EXISTS job (
    id          TEXT PRIMARY KEY,                    -- shortuuid
    status      TEXT NOT NULL,                       -- queued | running | done | failed
    total       INTEGER NOT NULL,
    detail      TEXT,                                -- why a job failed as a whole
    spool_dir   TEXT,                                -- uploaded input, kept until the job is done
    created_at  TEXT NOT NULL,
    finished_at TEXT,
    created_by  TEXT,                                -- the user who asked for it (NULL: DICOMSVC_AUTH=none)
    -- Several replicas: the replica running the job holds a lease, renewed while it runs; a job
    -- whose lease ran out (its replica died) is taken over by another (dicomsvc/jobs.py)
    claimed_by  TEXT,                                -- the replica running it (host:pid:random)
    lease_until REAL                                 -- seconds since the epoch, by the database's clock
);
CREATE INDEX IF NOT EXISTS job_by_creator ON job (created_by, created_at);
-- The runners' poll for queued jobs and expired leases: an index lookup, however many jobs are done
CREATE INDEX IF NOT EXISTS job_unfinished ON job (status, created_at);
CREATE TABLE IF NOT EXISTS job_item (
    job_id   TEXT NOT NULL REFERENCES job (id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,                       -- order in the request
    item     TEXT NOT NULL,                          -- JSON: what to ingest (dicomsvc.batch.Item)
    status   TEXT NOT NULL,                          -- pending | created | duplicate | failed | skipped
    result   TEXT,                                   -- JSON: the per-file result
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS job_item_pending ON job_item (job_id, status);

-- API tokens (dicomsvc token create|list|revoke; dicomsvc/auth/tokens.py): only the SHA-256 of a
-- token is kept; the token itself is shown once, when made.
CREATE TABLE IF NOT EXISTS api_token (
    id         TEXT PRIMARY KEY,                     -- shortuuid, names the token in list and revoke
    user       TEXT NOT NULL,                        -- the user the token acts as
    role       TEXT NOT NULL,                        -- reader | uploader | admin
    hash       TEXT NOT NULL UNIQUE,                 -- sha256 of the token, hex
    created_at TEXT NOT NULL,
    revoked_at TEXT                                  -- set by revoke: the token no longer works
);

-- The audit trail (dicomsvc/audit.py, storage/audit.py; README "Audit"): who did what to which
-- instance, study, series or job, and how it ended. Written in batches; append-only: the
-- triggers below refuse UPDATE and DELETE, whoever asks. Ids and the UIDs of a request's path,
-- the route template and the NAMES of query parameters -- never their values, nor data read
-- from a file.
CREATE TABLE IF NOT EXISTS audit (
    seq        INTEGER PRIMARY KEY,                  -- order of writing
    time       TEXT NOT NULL,                        -- ISO 8601, UTC: when the request arrived
    user       TEXT NOT NULL,                        -- the identity's user ('anonymous' without auth)
    role       TEXT NOT NULL,                        -- the highest role it held ('' none)
    action     TEXT NOT NULL,                        -- upload | view | download | anonymize | delete | search
    method     TEXT NOT NULL,                        -- HTTP method; JOB: a background job's ingest
    route      TEXT,                                 -- route template (/dicom/{id}/file)
    instance   TEXT,                                 -- dicomsvc instance id
    study      TEXT,                                 -- (0020,000D) Study Instance UID of the request's path
    series     TEXT,                                 -- (0020,000E) Series Instance UID of the request's path
    sop        TEXT,                                 -- (0008,0018) SOP Instance UID of the request's path
    job        TEXT,                                 -- background job id
    params     TEXT,                                 -- query parameter names, sorted, comma-separated
    status     INTEGER NOT NULL,                     -- outcome: HTTP status (each file's, for uploads)
    client     TEXT,                                 -- client address
    request_id TEXT,                                 -- X-Request-ID
    dataset    TEXT                                  -- clinical dataset id (POST/GET /datasets)
);
CREATE INDEX IF NOT EXISTS audit_time ON audit (time);
CREATE INDEX IF NOT EXISTS audit_user ON audit (user);
CREATE INDEX IF NOT EXISTS audit_action ON audit (action);
-- GET /audit?resource= looks in all five: each has its index, so the OR is five index lookups
CREATE INDEX IF NOT EXISTS audit_instance ON audit (instance);
CREATE INDEX IF NOT EXISTS audit_study ON audit (study);
CREATE INDEX IF NOT EXISTS audit_series ON audit (series);
CREATE INDEX IF NOT EXISTS audit_sop ON audit (sop);
CREATE INDEX IF NOT EXISTS audit_job ON audit (job);
CREATE INDEX IF NOT EXISTS audit_dataset ON audit (dataset);
CREATE TRIGGER IF NOT EXISTS audit_append_only_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;
CREATE TRIGGER IF NOT EXISTS audit_append_only_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'the audit trail is append-only');
END;

-- /readyz proves the database takes writes by committing one here (dicomsvc/health.py).
CREATE TABLE IF NOT EXISTS health (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at TEXT NOT NULL                         -- ISO 8601, UTC: the last readiness check
);
INSERT OR IGNORE INTO health (id, checked_at) VALUES (1, '');

-- Resumable uploads (tus 1.0.0; dicomsvc/resumable.py, README "Resumable uploads (tus)"): one row
-- per upload; its bytes are in <data>/uploads/<id> until it is ingested, terminated or expires.
CREATE TABLE IF NOT EXISTS upload (
    id          TEXT PRIMARY KEY,                    -- 32 random hex characters (the URL lets one write)
    owner       TEXT,                                -- the user who created it (NULL: DICOMSVC_AUTH=none)
    length      INTEGER NOT NULL,                    -- Upload-Length
    received    INTEGER NOT NULL,                    -- Upload-Offset: only raised once its bytes are synced
    options     TEXT NOT NULL,                       -- JSON: ingest options and filename (Upload-Metadata)
    status      TEXT NOT NULL,                       -- receiving | ingesting | done | failed
    result      TEXT,                                -- JSON: the ingest's answer (an id, a job, counts, an error)
    created_at  TEXT NOT NULL,                       -- ISO 8601, UTC
    expires_at  TEXT NOT NULL,                       -- removed (with its bytes) after this
    finished_at TEXT
);
CREATE INDEX IF NOT EXISTS upload_expiry ON upload (expires_at);
CREATE INDEX IF NOT EXISTS upload_by_owner ON upload (owner, status);

-- Values every server on one index must agree on (dicomsvc/storage/shared.py): with several
-- replicas (PostgreSQL), the anonymization secret made once, when DICOMSVC_ANON_SECRET is not set.
CREATE TABLE IF NOT EXISTS shared_value (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Clinical CSVs joined to studies (POST /datasets; dicomsvc/datasets.py, storage/datasets.py,
-- README "Clinical data (CSV) joined to studies"): one row per upload with its summary (row
-- numbers only), one dataset_row per (CSV row, matched study) with the row's other columns as
-- JSON. Kept here, never inside DICOM. Anonymized: key and study UID are pseudonyms.
CREATE TABLE IF NOT EXISTS dataset (
    id          TEXT PRIMARY KEY,                    -- shortuuid
    key_kind    TEXT NOT NULL,                       -- PatientID | AccessionNumber | StudyInstanceUID
    key_column  TEXT NOT NULL,                       -- the CSV header that held the key
    anonymized  INTEGER NOT NULL,                    -- 1: keys and study UIDs stored as pseudonyms
    columns     TEXT NOT NULL,                       -- JSON array: the clinical columns, in CSV order
    summary     TEXT NOT NULL,                       -- JSON: rows, matched, unmatched, ambiguous, duplicates...
    created_by  TEXT,                                -- the user who uploaded it (NULL: DICOMSVC_AUTH=none)
    created_at  TEXT NOT NULL                        -- ISO 8601, UTC
);
CREATE INDEX IF NOT EXISTS dataset_by_creator ON dataset (created_by, created_at);
CREATE TABLE IF NOT EXISTS dataset_row (
    dataset_id         TEXT NOT NULL REFERENCES dataset (id) ON DELETE CASCADE,
    study_instance_uid TEXT NOT NULL,                -- (0020,000D) of the matched study (anonymized: its pseudonym UID)
    row_number         INTEGER NOT NULL,             -- the CSV record (the header is row 1)
    key_value          TEXT NOT NULL,                -- the key cell, or its pseudonym (anonymized)
    clinical           TEXT NOT NULL,                -- JSON object: column -> cell text
    PRIMARY KEY (dataset_id, study_instance_uid)
);
CREATE INDEX IF NOT EXISTS dataset_row_by_row ON dataset_row (dataset_id, row_number);

-- Forwarding by routing rules (issue 14; dicomsvc/forwarding.py, storage/forwarding.py, README
-- "Routing rules"): one row per (instance, destination, anonymize) a rule sends it to, inserted in
-- the instance's own transaction (a stored instance's forwards are queued). Times are the
-- database's clock, seconds since the epoch. Deleting the instance deletes its rows (cascade).
CREATE TABLE IF NOT EXISTS forward (
    id              INTEGER PRIMARY KEY,
    dicom_pk        INTEGER NOT NULL REFERENCES dicom (pk) ON DELETE CASCADE,
    instance_id     TEXT NOT NULL,                   -- dicom.id
    destination     TEXT NOT NULL,                   -- a destination's name (DICOMSVC_NETWORK_CONFIG)
    anonymize       INTEGER NOT NULL,                -- 1: the anonymized copy is sent
    state           TEXT NOT NULL,                   -- queued | sent | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,                   -- due from then (backoff after a transient failure)
    last_detail     TEXT,                            -- why the last attempt failed (no patient data)
    attempted_at    REAL,                            -- the last attempt's time
    claimed_by      TEXT,                            -- the replica delivering it, until lease_until
    lease_until     REAL,
    created_at      REAL NOT NULL,
    sent_at         REAL
);
CREATE INDEX IF NOT EXISTS forward_due ON forward (state, next_attempt_at) WHERE state = 'queued';
CREATE UNIQUE INDEX IF NOT EXISTS forward_one ON forward (dicom_pk, destination, anonymize);
CREATE INDEX IF NOT EXISTS forward_counts ON forward (destination, state, created_at);
CREATE INDEX IF NOT EXISTS forward_errors ON forward (destination, attempted_at) WHERE last_detail IS NOT NULL;
CREATE INDEX IF NOT EXISTS forward_sent ON forward (sent_at) WHERE state = 'sent';  -- pruned after DICOMSVC_FORWARD_KEEP_SECONDS
