"""A Little Endian element reader that builds the data set pydicom's reader builds.

``pydicom.filereader.data_element_generator`` costs about 3 µs an element (a
``read`` and a ``tell`` per element, generators, debug checks); the header of a
CT (about 120 elements) took most of a millisecond. ``read_file`` reads the
file's bytes up to the pixel data in one read and walks them with
``struct.unpack_from``, building the same ``RawDataElement`` per element (tag,
VR, length, value, value_tell, is_implicit_VR, is_little_endian) and, for
sequences of undefined length, the same ``Sequence`` of item ``Dataset``s
(``is_undefined_length``, ``file_tell``, ``seq_item_tell``, the items' original
encodings and parent character sets) that ``pydicom.filereader.read_dataset``,
``read_sequence`` and ``read_sequence_item`` build. Sequences of defined length
stay raw bytes, as in pydicom (converted when first used).

Only Explicit VR Little Endian (PS3.5 §A.2, and every encapsulated syntax,
§A.4) and Implicit VR Little Endian (§A.1) data sets are read here, and
deflated ones (§A.5) once inflated (``read_dataset``). Whatever pydicom reads
its own way -- and ``dicomsvc.dicom.parse.read``'s warnings and repairs rely on
-- raises ``Unusual`` and the caller reads the whole file with pydicom: big
endian, no or a private transfer syntax, a command set (group 0000), an Explicit
VR data set that starts implicit or the reverse, VRs PS3.5 does not define,
item or delimitation tags (FFFE,xxxx) where no item may start, values of
undefined length other than sequences, an item that switches to Implicit VR,
elements that run past their item or the file, trailing bytes shorter than an
element header. ``COUNTS`` counts both outcomes (the tests check which path a
file takes).
"""

from collections import Counter
from functools import lru_cache, partial
from struct import Struct
from typing import BinaryIO

from pydicom import config as pydicom_config
from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import _dictionary_vr_fast
from pydicom.dataelem import DataElement, RawDataElement, convert_raw_data_element, empty_value_for_VR
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.filereader import _read_file_meta_info, read_preamble
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, PrivateTransferSyntaxes
from pydicom.uid import DeflatedExplicitVRLittleEndian
from pydicom.valuerep import EXPLICIT_VR_LENGTH_32, VR
from pydicom.values import convert_string

PIXEL_TAGS = frozenset((0x7FE00010, 0x7FE00009, 0x7FE00008))  # where the top-level reading stops
ITEM, ITEM_END, SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD  # PS3.5 §7.5
CHARSET = 0x00080005  # (0008,0005) Specific Character Set
UNDEFINED_LENGTH = 0xFFFFFFFF
# bytes read at first (a CT's header is 2-4 KB), then 3 times as many more while the header
# goes on: the pixel data is never read whole, only what shares the last read with the header
FIRST_READ = 1 << 13
# a header (everything before the pixel data) larger than this is left to pydicom, which
# reads it element by element (this reader holds the bytes and their values at once)
MAX_HEADER = 1 << 24
# PS3.5 Table 6.2-1 (and pydicom's): the two bytes of an explicit VR, as pydicom decodes them
VR_OF_BYTES = {vr.value.encode("ascii"): str(vr.value) for vr in VR if len(vr.value) == 2}
LONG_VRS = frozenset(str(vr.value) for vr in EXPLICIT_VR_LENGTH_32)  # 4-byte length, PS3.5 §7.1.2
_IMPLICIT = Struct("<HHL").unpack_from  # tag, 4-byte length (Implicit VR; items, delimiters)
_EXPLICIT = Struct("<HH2sH").unpack_from  # tag, VR, 2-byte length (Explicit VR)
_TAG = Struct("<HH").unpack_from  # a tag alone (what pydicom looks ahead at)
_LONG = Struct("<L").unpack_from  # the 4-byte length after OB, OW, SQ, UN, UT...
# RawDataElement(...) runs a Python-level __new__; build the named tuple directly (all fields)
_raw = partial(tuple.__new__, RawDataElement)

COUNTS: Counter[str] = Counter()  # "fast", and "pydicom: <why>" for each file left to pydicom


class Unusual(Exception):
    """The bytes hold something pydicom reads its own way: read the file with pydicom."""


class _Short(Exception):
    """The buffer ends before the bytes needed; the file may hold more."""


@lru_cache(maxsize=64)
def _empty(vr: str | None) -> bytes | None:
    return empty_value_for_VR(vr, raw=True)


@lru_cache(maxsize=4096)
def _implicit_undefined_is_sequence(tag: int) -> bool | None:
    """An undefined-length element in Implicit VR is a sequence when the dictionary says SQ
    (pydicom's ``_dictionary_vr_fast``); None when the tag is not in it (then pydicom looks
    for an Item tag next)."""
    try:
        return _dictionary_vr_fast(tag) == "SQ"
    except KeyError:
        return None


class _Reader:
    """Walks ``buf`` (the file's bytes from offset 0, so positions are file offsets)."""

    __slots__ = ("buf", "size", "complete", "defer", "end")

    def __init__(self, buf: bytes, complete: bool, defer: int | None):
        self.buf, self.size, self.complete, self.defer = buf, len(buf), complete, defer
        self.end = 0  # where the last sequence or item ended

    def short(self, why: str):
        """Bytes needed beyond the buffer: more of the file, or a cut file (pydicom's)."""
        raise Unusual(why) if self.complete else _Short()

    def top(self, pos: int, implicit: bool) -> tuple[dict, int]:
        """The top-level elements from ``pos`` to the pixel data or the end of the file
        (``read_dataset`` with ``stop_when`` at the pixel data), and where it stopped."""
        buf = self.buf
        if pos + 6 > self.size:
            self.short("a data set shorter than an element header")
        # read_dataset's _is_implicit_vr: the first element's VR bytes decide
        if implicit != (not (0x40 < buf[pos + 4] < 0x5B and 0x40 < buf[pos + 5] < 0x5B)):
            raise Unusual("the data set's VR encoding is not its transfer syntax's")
        elements: dict = {}
        return elements, self.run(pos, None, implicit, True, default_encoding, elements)

    def run(self, pos: int, end: int | None, implicit: bool, top: bool, encoding, elements: dict) -> int:
        """Read elements from ``pos`` into ``elements`` (``data_element_generator``), and
        return the position after them: at the top level, up to a pixel data tag (its
        position) or the end of the file; in an item, up to ``end`` (defined length) or
        through its Item Delimitation Item (FFFE,E00D). ``encoding``: the character set
        in force (sequences of undefined length hand it to their items)."""
        buf, size = self.buf, self.size
        limit = size if end is None else end
        defer = self.defer if top else None  # pydicom defers top-level values only
        vr_of, long_vrs, raw, empty = VR_OF_BYTES.get, LONG_VRS, _raw, _empty
        while True:
            if pos + 8 > limit:
                if end is not None:
                    if pos == end:
                        return pos
                    raise Unusual("an element header runs past its item")
                if top and pos == size and self.complete:
                    return pos
                self.short("a data set cut inside an element header")
            if implicit:
                group, elem, length = _IMPLICIT(buf, pos)
                vr = None
                start = pos + 8
            else:
                group, elem, vr_bytes, length = _EXPLICIT(buf, pos)
                vr = vr_of(vr_bytes)
                start = pos + 8
            tag = group << 16 | elem
            if group == 0xFFFE:
                if tag == ITEM_END and end is None and not top:
                    return pos + 8  # the end of an item of undefined length (its length unread, as pydicom)
                raise Unusual("an item or delimitation tag where a data element belongs")
            if top and tag in PIXEL_TAGS:
                return pos
            if not implicit:
                if vr is None:
                    raise Unusual("a VR PS3.5 does not define")
                if vr in long_vrs:
                    if pos + 12 > limit:
                        if end is not None:
                            raise Unusual("an element header runs past its item")
                        self.short("a data set cut inside an element header")
                    length = _LONG(buf, start)[0]
                    start = pos + 12
            key = BaseTag(tag)
            if length == UNDEFINED_LENGTH:
                elements[key] = self.undefined(key, vr, start, implicit, encoding)
                pos = self.end
                if end is not None and pos > end:
                    raise Unusual("a sequence runs past its item")
                continue
            pos = start + length
            if pos > limit:
                if end is not None:
                    raise Unusual("an element runs past its item")
                self.short("a value runs past the end of the file")
            if length == 0:
                value = empty(vr)
            elif defer is not None and length > defer and tag != CHARSET:
                value = None  # deferred, as with pydicom's defer_size (read from the file when used)
            else:
                value = buf[start:pos]
            if tag == CHARSET:  # as data_element_generator: in force for the sequences that follow
                encoding = convert_encodings(convert_string(value or b"", True))
            elements[key] = raw((key, vr, length, value, start, implicit, True, True, False))

    def undefined(self, tag: BaseTag, vr: str | None, start: int, implicit: bool, encoding) -> DataElement:
        """A sequence of undefined length (PS3.5 §7.5.2), read as pydicom's generator reads
        it: an explicit UN of undefined length is a sequence (PS3.5 §6.2.2); in Implicit VR,
        one the dictionary says is SQ, or an unknown tag whose value starts with an Item.
        Sets ``self.end``."""
        if implicit:
            known = _implicit_undefined_is_sequence(tag)
            if known:
                vr = "SQ"
            elif known is None:
                if start + 4 > self.size:
                    self.short("an undefined length at the end of the file")
                group, elem = _TAG(self.buf, start)
                if group << 16 | elem == ITEM:
                    vr = VR.SQ
        elif vr == "UN" and pydicom_config.settings.infer_sq_for_un_vr:
            vr = VR.SQ
        if vr != "SQ":
            raise Unusual("a value of undefined length that is not a sequence")
        seq = self.sequence(start, implicit, encoding)
        return DataElement(tag, vr, seq, start, is_undefined_length=True)

    def sequence(self, pos: int, implicit: bool, encoding) -> Sequence:
        """Items up to the Sequence Delimitation Item (``read_sequence``); sets ``self.end``."""
        buf = self.buf
        items = []
        while True:
            if pos + 8 > self.size:
                self.short("a sequence without its delimiter")
            group, elem, length = _IMPLICIT(buf, pos)
            tag = group << 16 | elem
            if tag == SEQUENCE_END:
                break
            if tag != ITEM:
                raise Unusual("a sequence holding something other than items")
            items.append(self.item(pos, None if length == UNDEFINED_LENGTH else pos + 8 + length, implicit, encoding))
            pos = self.end
        sequence = Sequence(items)
        sequence.is_undefined_length = True
        self.end = pos + 8
        return sequence

    def item(self, tell: int, end: int | None, implicit: bool, encoding) -> Dataset:
        """The data set of the item whose header is at ``tell`` (``read_sequence_item``): up
        to ``end``, or through its Item Delimitation Item when ``end`` is None; sets
        ``self.end``."""
        buf, size = self.buf, self.size
        pos = tell + 8
        if end is not None and end > size:
            self.short("an item runs past the end of the file")
        item_implicit = implicit
        if not implicit:  # _is_implicit_vr for a sequence item: the bytes where it starts decide
            if pos + 6 > size:
                if not self.complete:
                    raise _Short()
            elif not (0x40 < buf[pos + 4] < 0x5B and 0x40 < buf[pos + 5] < 0x5B):
                # pydicom would read the item as Implicit VR: fine when it is empty
                if end is None:
                    group, elem = _TAG(buf, pos)  # 6 bytes are there
                    empty = group << 16 | elem == ITEM_END
                else:
                    empty = pos == end
                if not empty:
                    raise Unusual("an item in Implicit VR inside an Explicit VR sequence")
                item_implicit = True
        elements: dict = {}
        self.end = self.run(pos, end, implicit, False, encoding, elements)
        ds = Dataset(elements, parent_encoding=encoding)
        if CHARSET in elements:
            charset = convert_encodings(convert_raw_data_element(elements[CHARSET]).value)
        else:
            charset = encoding
        ds.set_original_encoding(item_implicit, True, charset)
        ds.is_undefined_length_sequence_item = end is None
        ds.seq_item_tell = tell
        ds.file_tell = tell
        return ds


def read_dataset(buf: bytes, pos: int, implicit: bool, complete: bool, defer: int | None = None) -> tuple[Dataset, int]:
    """The data set in ``buf`` (the file's bytes from offset 0) from ``pos`` to the pixel data
    or the end, as ``pydicom.filereader.read_dataset(fp, implicit, True, stop_when=<pixel
    data>, defer_size=defer)`` reads it, and the offset where it stopped (the pixel data
    element's, or the end). Raises Unusual (also when ``buf`` ends early and is not
    ``complete``)."""
    reader = _Reader(buf, complete, defer)
    try:
        elements, stop = reader.top(pos, implicit)
    except _Short:
        raise Unusual("the buffer ends early") from None
    return _dataset(elements, implicit), stop


def _dataset(elements: dict, implicit: bool) -> Dataset:
    """The end of ``read_dataset``: the Dataset over the elements, with its original encoding."""
    ds = Dataset(elements, parent_encoding=default_encoding)
    if CHARSET in elements:
        encoding = convert_encodings(convert_raw_data_element(elements[CHARSET]).value)
    else:
        encoding = default_encoding
    ds.set_original_encoding(implicit, True, encoding)
    return ds


def read_file(fp: BinaryIO, src: BinaryIO) -> tuple[FileDataset, int]:
    """The file as ``dcmread(src, force=True, stop_before_pixels=True)`` reads it (``src``:
    the same file, as handed to dcmread), and the offset of the pixel data element (or the
    end of the file). The preamble and the file meta group are read here too (``_file_meta``:
    pydicom's ``_read_file_meta_info`` took a quarter of a CT's parse), by pydicom when they
    hold anything unusual (its repairs); the data set here. Raises Unusual."""
    try:
        return _read_file(fp, src)
    except Unusual as exc:
        COUNTS[f"pydicom: {exc}"] += 1
        raise


def _read_file(fp: BinaryIO, src: BinaryIO) -> tuple[FileDataset, int]:
    fp.seek(0)
    buf, more, head = b"", FIRST_READ, None
    while True:  # the header, then 3 times as many bytes more while it goes on
        chunk = fp.read(more)
        complete = len(chunk) < more
        buf += chunk
        if head is None:
            try:  # the file meta from the bytes read, or (anything odd) read by pydicom
                head = _file_meta(buf, complete)
            except _Short:
                pass
            else:
                if head is None:
                    head = _pydicom_file_meta(src)
                    fp.seek(len(buf))  # src reads through fp: back to where the reading goes on
                preamble, meta, start, implicit = head
        if head is not None and (complete or len(buf) >= start + 2):
            if len(buf) <= start:
                raise Unusual("nothing after the file meta")
            if buf[start : start + 2] == b"\0\0":  # read_partial's command set (group 0000) first
                raise Unusual("a command set (group 0000)")
            try:
                elements, stop = _Reader(buf, complete, None).top(start, implicit)
                break
            except _Short:
                pass
        if len(buf) >= MAX_HEADER:
            raise Unusual("a header larger than MAX_HEADER")
        more = 3 * len(buf)
    dataset = _dataset(elements, implicit)
    # read_partial's end: the FileDataset over the data set, its encoding as read
    ds = FileDataset(src, dataset, preamble, meta, implicit, True)
    ds.set_original_encoding(implicit, True, dataset._character_set)
    src.seek(stop)
    COUNTS["fast"] += 1
    return ds, stop


def _pydicom_file_meta(src: BinaryIO) -> tuple[bytes | None, FileMetaDataset, int, bool]:
    """The preamble and the file meta group as ``dcmread`` reads them, where the data set
    starts, and whether it is Implicit VR (``_syntax``)."""
    src.seek(0)
    preamble = read_preamble(src, True)
    meta = _read_file_meta_info(src)
    return preamble, meta, src.tell(), _syntax(meta)


def _syntax(meta: FileMetaDataset) -> bool:
    """Whether the data set is Implicit VR Little Endian (else Explicit), as ``read_partial``
    decides from (0002,0010) Transfer Syntax UID; Unusual for what pydicom reads its own way."""
    syntax = meta.get("TransferSyntaxUID")  # as read_partial decides the encoding
    if syntax is None:
        raise Unusual("no transfer syntax: pydicom guesses the encoding")
    if syntax in (ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian) or syntax in PrivateTransferSyntaxes:
        raise Unusual("a big endian, deflated or private transfer syntax")
    implicit = syntax == ImplicitVRLittleEndian
    if not implicit and syntax != ExplicitVRLittleEndian and not isinstance(syntax, str):
        raise Unusual("a transfer syntax that is not one text value")
    return implicit


def _file_meta(buf: bytes, complete: bool) -> tuple[bytes, FileMetaDataset, int, bool] | None:
    """``_pydicom_file_meta`` from ``buf`` (the file's first bytes): the 128-byte preamble and
    'DICM' (PS3.10 §7.1), then the group 0002 elements (always Explicit VR Little Endian) up
    to the first element of another group, built as ``_read_file_meta_info`` builds them (its
    first element and (0002,0000) Group Length converted, as it converts them). None when the
    file holds anything pydicom reads its own way -- no 'DICM', a VR PS3.5 does not define
    (pydicom may then read the group as Implicit VR), a sequence or an undefined length, a
    cut element, an empty group -- and a conversion that raises: pydicom's reading decides.
    Raises _Short when ``buf`` ends first and the file holds more."""
    size = len(buf)
    if size < 132:
        if complete:
            return None
        raise _Short()
    if buf[128:132] != b"DICM":
        return None
    pos, elements, vr_of, raw = 132, {}, VR_OF_BYTES.get, _raw
    while True:
        if pos + 8 > size:
            if complete:
                return None
            raise _Short()
        group, elem, vr_bytes, length = _EXPLICIT(buf, pos)
        if group != 2:  # where data_element_generator's stop_when rewinds to
            break
        vr = vr_of(vr_bytes)
        if vr is None or vr == "SQ":
            return None
        start = pos + 8
        if vr in LONG_VRS:
            if pos + 12 > size:
                if complete:
                    return None
                raise _Short()
            length, start = _LONG(buf, start)[0], pos + 12
        if length == UNDEFINED_LENGTH:
            return None
        pos = start + length
        if pos > size:
            if complete:
                return None
            raise _Short()
        key = BaseTag(group << 16 | elem)
        value = _empty(vr) if length == 0 else buf[start:pos]
        elements[key] = raw((key, vr, length, value, start, False, True, True, False))
    if not elements:
        return None
    meta = FileMetaDataset(elements)
    meta.set_original_encoding(False, True, default_encoding)
    try:
        meta[next(iter(elements))]  # _read_file_meta_info's check of the first element
        if 0x00020000 in elements:  # and its look at the group length (a log line when wrong)
            meta.FileMetaInformationGroupLength  # noqa: B018
    except Exception:
        return None
    return buf[:128], meta, pos, _syntax(meta)
