"""How one request wants its files ingested, read once from wherever the client said it."""

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import BadRequest


YES = ("1", "true", "yes", "on")
NO = ("0", "false", "no", "off", "")


def flag(value: object, name: str = "the option") -> bool:
    """A yes/no option from a query string, a form field or JSON (absent: no). Anything but
    those words (or a JSON boolean) is a 400: a typo such as ``anonymize=ture`` must never be
    read as "no" and keep the patient's identifiers."""
    if value is None or value is False:
        return False
    if value is True:
        return True
    if isinstance(value, str):
        word = value.strip().lower()
        if word in YES:
            return True
        if word in NO:
            return False
    raise BadRequest(f"{name} must be one of {', '.join(YES + NO[:-1])} (or true/false in JSON)")


@dataclass(frozen=True)
class Options:
    anonymize: bool = False  # (forced on by DICOMSVC_ANONYMIZE=always)
    allow_burned_in: bool = False  # anonymize even kinds that often carry burned-in text
    study_uid: str | None = None  # STOW-RS: the instance must belong to this study
    anonymized_from: str | None = None  # POST /dicom/{id}/anonymize: the stored original
    user: str | None = None  # who asks: recorded as the owner (dicom.uploaded_by); None without auth
    # C-STORE: the (0000,0002) Affected SOP Class UID and (0000,1000) Affected SOP Instance UID the
    # data set must carry (PS3.7 §9.1.1.1); None: not checked
    affected_sop: tuple[str, str] | None = None

    @classmethod
    def from_request(cls, *sources: Mapping, **fixed) -> "Options":
        """The flags set in any of ``sources`` (the query string, JSON keys, form fields)."""

        def any_says(name: str) -> bool:
            return any(flag(source.get(name), name) for source in sources)

        return cls(anonymize=any_says("anonymize"), allow_burned_in=any_says("allow_burned_in"), **fixed)


PLAIN = Options()  # as stored: no anonymization, no study check
