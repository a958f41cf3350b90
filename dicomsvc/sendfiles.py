"""What ``dicomsvc.sending`` has a worker make before an instance leaves: its anonymized copy.

Plain synchronous code run in a worker process (``svc.cpu(tasks.anonymized_copy, ...)``): the
stored original read through the blob store (decrypted, fetched from S3), de-identified by our
anonymizer (``dicom.anonymize``: PS3.15 Annex E basic profile; UIDs replaced by ones derived
from the service's persistent secret, so the same study sent twice gets the same UIDs and lands
as one study), written as a temporary file the caller sends and removes.
"""

from pydicom import dcmread

from .config import Config
from .dicom.parse import open_source
from .errors import DicomSvcError, InvalidDicom
from .ingest import save_temp
from .storage.blobs import BlobStore


def anonymized_copy(config: Config, dcm_blob: str) -> tuple[str, str, int]:
    """(temporary file, its (0008,0018) SOP Instance UID, its size) of the stored instance's
    anonymized copy. ``BurnedInAnnotation`` (refused: PS3.15 E.1.1 burned-in text) or
    ``InvalidDicom`` when it cannot be made."""
    from .dicom.anonymize import anonymize  # the profile table loads on first use

    blobs = BlobStore.of(config)
    try:
        with open_source(blobs.stored(dcm_blob)) as source:
            ds = dcmread(source, force=True)
        out = anonymize(ds, config.anon_secret.encode())
    except DicomSvcError:
        raise
    except Exception as exc:  # pydicom on a value it cannot convert, say
        raise InvalidDicom(f"the instance could not be anonymized ({type(exc).__name__})") from None
    path, size = save_temp(blobs, out)
    return str(path), str(out.SOPInstanceUID), size
