"""DICOMweb (PS3.18) under ``/dicomweb``: QIDO-RS, WADO-RS, STOW-RS and DELETE.

``routes.routes`` is the one list of routes app.py mounts; README-paths.md has the URL scheme.
"""
