"""dicomsvc.dicom.dictionary: pydicom's data dictionary read without importing pydicom,
giving pydicom.datadict's answers for every entry (this test process may import pydicom)."""

import random
import subprocess
import sys

import pytest
from pydicom import datadict
from pydicom._dicom_dict import DicomDictionary, RepeatersDictionary

from dicomsvc.dicom import dictionary

pytestmark = pytest.mark.same_in_scale_run("the tag dictionary is code")


def _expansions(mask: str) -> list[int]:
    """Tags a repeating-group mask such as 60xx0010 stands for: every x as 0, as F, and random."""
    rng = random.Random(mask)
    return [
        int(mask.replace("x", "0"), 16),
        int(mask.replace("x", "F"), 16),
        *(int("".join(rng.choice("0123456789ABCDEF") if c == "x" else c for c in mask), 16) for _ in range(4)),
    ]


def _tags() -> list[int]:
    rng = random.Random(12)
    tags = list(DicomDictionary)
    tags += [t for mask in RepeatersDictionary for t in _expansions(mask)]
    tags += [t | 0x00010000 for t in tags[:2000]]  # private (odd) groups
    tags += [rng.getrandbits(32) for _ in range(20000)]
    tags += [0x00000000, 0xFFFFFFFF, 0x00090010, 0x00190010, 0x00080000, 0x7FE00010, 0x60000010, 0x60010010]
    return tags


def test_keyword_and_vr_of_every_tag_as_pydicom():
    for tag in _tags():
        assert dictionary.keyword_for_tag(tag) == datadict.keyword_for_tag(tag), f"{tag:08X}"
        try:
            expected = datadict.dictionary_VR(tag)
        except KeyError:
            with pytest.raises(KeyError):
                dictionary.dictionary_VR(tag)
        else:
            assert dictionary.dictionary_VR(tag) == expected, f"{tag:08X}"


def test_tag_of_every_keyword_as_pydicom():
    keywords = [entry[4] for entry in DicomDictionary.values()]
    keywords += [entry[4] for entry in RepeatersDictionary.values()]  # not found by either
    keywords += ["", "NotAKeyword", "patientname", "PatientName ", "GroupLength", "00100010"]
    for keyword in keywords:
        assert dictionary.tag_for_keyword(keyword) == datadict.tag_for_keyword(keyword), keyword


def test_pydicom_is_not_imported():
    code = (
        "import sys\n"
        "from dicomsvc.dicom import dictionary as d\n"
        "assert d.keyword_for_tag(0x00100020) == 'PatientID' and d.dictionary_VR(0x60020010) == 'US'\n"
        "assert d.tag_for_keyword('StudyInstanceUID') == 0x0020000D\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pydicom', 'numpy')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
