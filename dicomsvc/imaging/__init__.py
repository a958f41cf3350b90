"""Pixels: decoding frames, the display pipeline (PS3.4 N.2), PNG/JPEG encoding, arrays.

Synchronous, CPU-bound code run in worker processes. Depends only on ``dicomsvc.dicom``
and ``dicomsvc.errors``.
"""
