"""The DICOM data layer: reading, validating, flattening, converting and anonymizing data sets.

Pure functions over files and ``pydicom`` datasets. Imports nothing of the service
above it (no storage, no HTTP, no workers).
"""
