"""dicomsvc: a lean DICOM ingest-and-render HTTP service."""

__version__ = "0.1.0"
