"""What a file can be, judged before parsing: its first bytes and its name.

One definition for the server (batches, folders, archives) and the bulk importer
alike, so both pass over the same files.
"""

import struct

ZIP_MAGIC = b"PK\x03\x04"  # a ZIP local file header (APPNOTE 4.3.7)
HEAD_BYTES = 132  # what ``sniff`` needs: the preamble and 'DICM', or a data set's first tag
# Groups a data set without a preamble may plausibly start with (PS3.10 §7.1 needs the preamble,
# but bare data sets of group 0008 and file meta without one are common in the wild).
FIRST_GROUPS = {0x0002, 0x0004, 0x0008}
# Names that are never instances: operating-system litter and media directories.
LITTER = frozenset({"__MACOSX", "Thumbs.db", "desktop.ini"})


def sniff(head: bytes) -> str | None:
    """Why the first bytes of a file cannot be DICOM, or None if they can."""
    if len(head) >= 132 and head[128:132] == b"DICM":  # PS3.10 §7.1: preamble, then 'DICM'
        return None
    if head[:4] == ZIP_MAGIC:
        return "a ZIP archive, not a DICOM file (archives inside archives are not expanded)"
    if len(head) < 8:
        return "not a DICOM file: too short"
    group_le, group_be = struct.unpack("<H", head[:2])[0], struct.unpack(">H", head[:2])[0]
    if group_le not in FIRST_GROUPS and group_be not in FIRST_GROUPS:
        return "not a DICOM file: no 'DICM' prefix and no DICOM data set at the start"
    return None


def is_zip(head: bytes) -> bool:
    return head[:4] == ZIP_MAGIC


def skip_reason(name: str) -> str | None:
    """Why a file is not even looked at, judged by its name (a path in a folder or an archive)."""
    parts = name.replace("\\", "/").split("/")
    if any(part in LITTER for part in parts) or parts[-1].startswith("."):
        return "hidden or operating-system metadata file"
    if parts[-1].upper() == "DICOMDIR":  # PS3.10 §8.6: a media directory, not an instance
        return "DICOMDIR (a media directory, not an instance)"
    return None
