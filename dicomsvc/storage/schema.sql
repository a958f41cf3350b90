-- dicomsvc schema. Applied at every start-up; every statement is idempotent.

-- One row per stored instance.
CREATE TABLE IF NOT EXISTS dicom (
    pk                  INTEGER PRIMARY KEY,
    id                  TEXT NOT NULL UNIQUE,        -- shortuuid, the public id
    sop_instance_uid    TEXT NOT NULL,               -- (0008,0018)
    pixel_hash          TEXT NOT NULL,               -- sha256 of the pixel data value; '' when none
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
    -- Posting the same instance (same SOP Instance UID, same pixels) again stores nothing.
    UNIQUE (sop_instance_uid, pixel_hash)
);
CREATE INDEX IF NOT EXISTS dicom_study ON dicom (study_instance_uid);
CREATE INDEX IF NOT EXISTS dicom_series ON dicom (series_instance_uid);
CREATE INDEX IF NOT EXISTS dicom_patient ON dicom (patient_id);
CREATE INDEX IF NOT EXISTS dicom_created ON dicom (created_at);
-- Search filters (GET /dicom): each index also orders by pk, so "newest first" needs no sort.
CREATE INDEX IF NOT EXISTS dicom_sop ON dicom (sop_instance_uid);
CREATE INDEX IF NOT EXISTS dicom_modality ON dicom (modality);
CREATE INDEX IF NOT EXISTS dicom_study_date ON dicom (study_date);
CREATE INDEX IF NOT EXISTS dicom_accession ON dicom (accession_number);

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
-- GET /tags is one scan of this index.
CREATE INDEX IF NOT EXISTS dicom_tag_by_dicom ON dicom_tag (dicom_pk, id);

-- Background imports: one row per job, one per file in it (see dicomsvc/jobs.py).
CREATE TABLE IF NOT EXISTS job (
    id          TEXT PRIMARY KEY,                    -- shortuuid
    status      TEXT NOT NULL,                       -- queued | running | done | failed
    total       INTEGER NOT NULL,
    detail      TEXT,                                -- why a job failed as a whole
    spool_dir   TEXT,                                -- uploaded input, kept until the job is done
    created_at  TEXT NOT NULL,
    finished_at TEXT
);
CREATE TABLE IF NOT EXISTS job_item (
    job_id   TEXT NOT NULL REFERENCES job (id) ON DELETE CASCADE,
    seq      INTEGER NOT NULL,                       -- order in the request
    item     TEXT NOT NULL,                          -- JSON: what to ingest (dicomsvc.batch.Item)
    status   TEXT NOT NULL,                          -- pending | created | duplicate | failed | skipped
    result   TEXT,                                   -- JSON: the per-file result
    PRIMARY KEY (job_id, seq)
);
CREATE INDEX IF NOT EXISTS job_item_pending ON job_item (job_id, status);
