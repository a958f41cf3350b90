"""The one error hierarchy: every error a client can cause maps to a status and a code.

Messages (``detail``) never carry patient data: they name files, tags and
transfer syntaxes, never values read from a dataset.
"""


class DicomSvcError(Exception):
    status = 400
    code = "bad_request"
    # (SOP Class UID, SOP Instance UID) of the instance refused, once it was parsed far enough
    # to know them: STOW-RS names the failed instance with them (PS3.18 Table I.1-1)
    instance: tuple[str | None, str | None] = (None, None)

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def to_json(self) -> dict:
        return {"error": self.code, "detail": self.detail}


class BadRequest(DicomSvcError):
    status, code = 400, "bad_request"


class Unauthorized(DicomSvcError):
    """No credentials, or credentials that do not verify (RFC 9110 §15.5.2; answered with
    ``WWW-Authenticate: Bearer``, RFC 6750 §3)."""

    status, code = 401, "unauthorized"


class Forbidden(DicomSvcError):
    status, code = 403, "forbidden"


class NotFound(DicomSvcError):
    status, code = 404, "not_found"


class NoPixelData(DicomSvcError):
    status, code = 404, "no_pixel_data"


class TooLarge(DicomSvcError):
    status, code = 413, "too_large"


class RangeNotSatisfiable(DicomSvcError):
    """A Range header none of whose ranges lies within the file (RFC 9110 §15.5.17)."""

    status, code = 416, "range_not_satisfiable"


class UnsupportedTransferSyntax(DicomSvcError):
    """Pixel data that cannot be decoded (unsupported syntax, corrupt stream)."""

    status, code = 415, "unsupported_transfer_syntax"


class UnsupportedMediaType(DicomSvcError):
    """A request body of a type the route does not take."""

    status, code = 415, "unsupported_media_type"


class InvalidDicom(DicomSvcError):
    status, code = 422, "invalid_dicom"


class InvalidImage(DicomSvcError):
    """A JPEG or PNG sent to become DICOM (dicomsvc.imaging.photo) that is truncated or damaged."""

    status, code = 422, "invalid_image"


class NotDicom(InvalidDicom):
    """Not even shaped like DICOM (a README, a PNG): in a batch such a file is skipped."""


class BurnedInAnnotation(DicomSvcError):
    """Anonymizing an instance that probably shows patient data in its pixels: refused unless allowed."""

    status, code = 422, "burned_in_annotation"


class StudyMismatch(DicomSvcError):
    """STOW-RS to /studies/{uid} with an instance of another study."""

    status, code = 409, "study_mismatch"


class NotAcceptable(DicomSvcError):
    """Nothing the client's Accept allows can be produced (PS3.18 §8.7.5: 406)."""

    status, code = 406, "not_acceptable"


class InsufficientStorage(DicomSvcError):
    """The disk (or quota) is full: nothing was stored (RFC 4918 §11.5: 507)."""

    status, code = 507, "insufficient_storage"


class FrameTooLarge(TooLarge):
    """A frame whose decoded size is over DICOMSVC_MAX_FRAME_BYTES: refused before decoding."""


class CodestreamMismatch(UnsupportedTransferSyntax):
    """A compressed frame whose own header (JPEG SOF, JPEG-LS SOF55, JPEG 2000 SIZ, RLE header)
    describes another image than the data set: refused before decoding."""


class WorkerMemory(TooLarge):
    """The work needed more memory than a worker may have (DICOMSVC_WORKER_MEMORY)."""


class Busy(DicomSvcError):
    """The work took longer than a worker may spend on one task (DICOMSVC_WORKER_TIMEOUT)."""

    status, code = 503, "busy"


class DamagedBlob(DicomSvcError):
    """A stored, encrypted object failed AES-GCM authentication (NIST SP 800-38D §7.2): changed,
    cut, swapped or damaged on disk, or wrapped by a master key the service does not hold. Not
    the client's fault, but not an unexpected bug either: a JSON answer naming the object's
    state, never its contents (dicomsvc.storage.crypt logs which object)."""

    status, code = 422, "damaged_blob"


class StorageUnavailable(DicomSvcError):
    """The object store (DICOMSVC_BLOB_URL=s3://...) did not answer, answered 5xx or refused our
    credentials: nothing was stored or served, try again later (RFC 9110 §15.6.4: 503)."""

    status, code = 503, "storage_unavailable"


class SopMismatch(DicomSvcError):
    """A C-STORE whose data set's (0008,0016) SOP Class UID or (0008,0018) SOP Instance UID is
    not the request's Affected SOP Class / Instance UID (PS3.4 B.2.3: 0xA900, data set does
    not match SOP class)."""

    status, code = 409, "sop_mismatch"
