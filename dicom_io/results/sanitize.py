"""Source values checked before results copy them: each against its VR, VM and the IOD.

highdicom puts the source's Patient and Study elements (and its equipment, in the acquisition
equipment item) into every result as they are, and real sources hold broken ones (an age
``62``, a date ``2020-01-02``, a name past 64 characters, latin-1 without a Specific
Character Set): results copying them fail ``dciodvfy``. :func:`sanitize` checks each element
of a source context's reference, once per image, against its dictionary VR and VM:

* corrected where the value has one reading: padding and blanks, ``62`` -> ``062Y``,
  ``2020-01-02`` or ``2020.01.02`` -> ``20200102``, ``12:30:00`` -> ``123000``, ISO
  date-times, lower-case code strings, ``12.0`` as an integer, an over-long decimal string
  in 16 characters, the Specific Character Set pydicom decoded with
  (:func:`declared_character_set`);
* else left out, or emptied where results need it (Type 2). Text is never cut (a cut name or
  ID names someone else); non-ASCII text without a usable character set is a guess: left out.

Text lengths count encoded bytes (as ``dciodvfy`` does; never laxer than PS3.5's characters).
Sequences are carried only where their items' macros are checked
(:func:`~dicom_io.results.modules.items_of`) and all items pass; then
:func:`~dicom_io.results.modules.conform_modules` keeps the conditions between attributes.
Each change is logged at DEBUG naming the attribute, never its value.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Collection
from typing import Any

from highdicom import SpecificCharacterSetValues
from pydicom import config
from pydicom.charset import convert_encodings, decode_bytes, encode_string, python_encoding
from pydicom.datadict import dictionary_has_tag, dictionary_VM, dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import BaseTag, Tag
from pydicom.valuerep import TEXT_VR_DELIMS

from dicom_io.results.modules import ENUMERATED, check_items, conform_modules
from dicom_io.results.values import (
    CHECKS,
    SINGLE_VALUE_VRS,
    STRING_VRS,
    TEXT_MAX,
)

logger = logging.getLogger(__name__)

_CHARSET_TAG = 0x00080005
_DEFAULT_CODEC = python_encoding[""]
#: Terms a result may declare: those highdicom accepts and pydicom decodes.
_TERMS = tuple(sorted(v.value for v in SpecificCharacterSetValues if v.value in python_encoding))
_MULTI_BYTE = frozenset({"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 58"})
_G0 = "ISO 2022 IR 6"

_VM = re.compile(r"(\d+)(?:-(\d+)?(n)?)?")


def declared_character_set(values: list[str]) -> tuple[str | list[str] | None, list[str]]:
    """What results declare for a source's Specific Character Set ``values``, and the codecs
    pydicom decoded the source's text with.

    The text was decoded by pydicom already; results declare the standard term of the codecs
    it used, in the form highdicom takes (``ISO 2022 IR 100`` alone is ``ISO_IR 100``; a
    first value empty or multi-byte gets ``ISO 2022 IR 6`` before it). None: the default
    repertoire (also where pydicom fell back to it, or no term fits: non-ASCII text is then
    left out).
    """
    values = [str(v).strip() for v in values]
    if not any(values):
        return None, [_DEFAULT_CODEC]
    if len(values) == 1 and values[0] in _TERMS:
        codecs = [python_encoding[values[0]]]
    else:  # as pydicom decoded: corrected terms (ISO-IR 100), the default for unknown ones,
        codecs = convert_encodings(values)  # stand-alone ones alone (it warns of them again)

    def term(codec: str, extended: bool) -> str | None:
        found = [t for t in _TERMS if python_encoding[t] == codec
                 and t.startswith("ISO 2022") == extended]
        return found[0] if found else None

    if len(codecs) == 1:
        if codecs[0] == _DEFAULT_CODEC:
            return None, codecs
        single = term(codecs[0], False)
        if single is not None:
            return single, codecs
        extended = term(codecs[0], True)
        if extended is None:
            return None, [_DEFAULT_CODEC]
        return [_G0, extended], [_DEFAULT_CODEC, codecs[0]]
    terms = [_G0 if codec == _DEFAULT_CODEC else term(codec, True) for codec in codecs]
    if None in terms:
        return None, [_DEFAULT_CODEC]
    if terms[0] in _MULTI_BYTE:
        terms, codecs = [_G0, *terms], [_DEFAULT_CODEC, *codecs]
    return [t for t in terms if t is not None], codecs


def texts_of(value: Any) -> list[str] | None:
    """An element's values as text (pydicom's own string of DS, IS, PN), or None: bytes."""
    if value is None:
        return []
    items = list(value) if isinstance(value, MultiValue | list | tuple) else [value]
    out = []
    for item in items:
        if isinstance(item, bytes | bytearray):
            return None
        out.append("" if item is None else str(item))
    return out


def _vm_allows(tag: int, count: int) -> bool:
    m = _VM.fullmatch(dictionary_VM(tag).strip())
    if m is None or count == 0:
        return True
    low = int(m[1])
    if m[3]:  # "1-n", "2-2n", "3-3n"
        step = int(m[2]) if m[2] else 1
        return count >= low and count % step == 0
    return low <= count <= int(m[2] or low)


class _Checker:
    """Checks elements against their VR and VM in one character set."""

    def __init__(self, codecs: list[str]) -> None:
        self.codecs = codecs
        self.default = codecs == [_DEFAULT_CODEC]

    def _encode(self, text: str) -> bytes | None:
        """``text`` as results encode it, or None if it cannot be encoded."""
        if text.isascii():
            return text.encode("ascii")
        if self.default:
            return None
        for char in set(text):
            if not any(_encodes(char, codec) for codec in self.codecs):
                return None
        if len(self.codecs) == 1:
            return text.encode(self.codecs[0])
        return encode_string(text, self.codecs)

    def text(self, vr: str, text: str) -> str | None:
        text = text.rstrip(" \x00")  # padding, also NUL as some senders pad
        text = text if vr in SINGLE_VALUE_VRS else text.lstrip(" ")
        allowed = "\n\r\f" if vr in SINGLE_VALUE_VRS else ""
        for char in text:
            code = ord(char)
            if (code < 0x20 and char not in allowed) or 0x7F <= code <= 0x9F or char == "\ufffd":
                return None
        encoded = self._encode(text)
        if encoded is None:
            return None
        # A delimiter byte inside a multi-byte character (GB18030, GBK) reads as a delimiter
        # (with code extensions, readers know it by the escape sequences around it).
        delimiters = (("\\", "^", "=") if vr == "PN"
                      else ("\\",) if vr not in SINGLE_VALUE_VRS else ())
        if len(self.codecs) == 1 and not self.codecs[0].startswith("iso2022") and any(
            encoded.count(d.encode()) != text.count(d) for d in delimiters
        ):
            return None
        if vr == "PN":
            groups = text.split("=")
            if len(groups) > 3 or any(g.count("^") > 4 or len(self._encode(g) or b"") > 64
                                      for g in groups):
                return None
            return text
        longest = TEXT_MAX[vr]
        return text if not longest or len(encoded) <= longest else None

    def value(self, vr: str, text: str) -> str | None:
        if not text.strip(" \x00"):
            return ""
        if vr in TEXT_MAX:
            return self.text(vr, text)
        return CHECKS[vr](text)

    def _rawtexts_of(self, raw: RawDataElement, vr: str) -> list[str]:
        """The values of an element pydicom has not converted, decoded here: converting
        would have pydicom validate them, and its warnings (logged) quote the value."""
        value = raw.value or b""
        parts = [value] if vr in SINGLE_VALUE_VRS else value.split(b"\\")
        if vr == "PN":
            return ["=".join(decode_bytes(group, self.codecs, {0x5E}) for group in
                             part.split(b"=")) for part in parts]
        if vr in TEXT_MAX:
            delimiters = set(TEXT_VR_DELIMS) if vr in SINGLE_VALUE_VRS else set()
            return [decode_bytes(part, self.codecs, delimiters) for part in parts]
        return [part.decode("ascii", "replace") for part in parts]  # U+FFFD: refused

    def element(self, ds: Dataset, tag: BaseTag) -> tuple[DataElement | None, str]:
        """``ds[tag]`` itself if valid, a corrected copy, or None; and what was done or wrong.

        An element pydicom has not converted yet (in a sequence item) is replaced by one
        converted here."""
        if tag.is_private or tag.element == 0 or not dictionary_has_tag(tag):
            return None, "not a public attribute"
        allowed = dictionary_VR(tag).split(" or ")
        item = ds.get_item(tag)
        raw = item if isinstance(item, RawDataElement) else None
        # Implicit VR (None), or UN from a converter: the dictionary's VR (same bytes)
        vr = (raw.VR if raw.VR not in (None, "UN") else allowed[0]) if raw else item.VR
        target = vr
        if vr not in allowed:
            if not (vr in STRING_VRS and len(allowed) == 1 and allowed[0] in STRING_VRS):
                return None, f"VR {vr} where the dictionary says {'/'.join(allowed)}"
            target = allowed[0]
        allowed_values = ENUMERATED.get(keyword_for_tag(tag))
        if target not in STRING_VRS:  # binary or SQ: pydicom read it whole
            elem = ds[tag]
            if elem.VR == "SQ":
                problem = check_items(elem, self.element)
                return (None, problem) if problem else (elem, "")
            if not _vm_allows(tag, elem.VM):
                return None, f"VM {elem.VM} not allowed"
            values = elem.value if isinstance(elem.value, MultiValue | list) else [elem.value]
            if allowed_values is not None and any(str(v) not in allowed_values for v in values):
                return None, "not one of its enumerated values"
            return elem, ""
        texts = self._rawtexts_of(raw, target) if raw is not None else texts_of(ds[tag].value)
        if texts is None:
            return None, f"undecoded bytes in a {target}"
        if target in SINGLE_VALUE_VRS and len(texts) > 1:
            texts = ["\\".join(texts)]
        elif target not in SINGLE_VALUE_VRS and vr in SINGLE_VALUE_VRS:
            # read as one value: split as the VR is
            texts = [part for text in texts for part in text.split("\\")]
        fixed = [self.value(target, text) for text in texts]
        if None in fixed:
            return None, f"not a valid {target}"
        empty = not any(fixed)
        if empty:
            fixed = []  # no value (also a lone backslash: separators without values)
        if not _vm_allows(tag, len(fixed)):
            return None, f"VM {len(fixed)} not allowed"
        if allowed_values is not None and any(v and v not in allowed_values for v in fixed):
            return None, "not one of its enumerated values"
        same = target == vr and (fixed == texts or (empty and len(texts) <= 1))
        if same and raw is None:
            return ds[tag], ""
        new = DataElement(tag, target, fixed[0] if len(fixed) == 1 else (fixed or None),
                          validation_mode=config.IGNORE)
        return new, "" if same else f"corrected to its VR ({target})"


def _empty(value: Any) -> bool:
    try:
        return len(value) == 0
    except TypeError:  # a number
        return value is None


def _encodes(char: str, codec: str) -> bool:
    if codec == _DEFAULT_CODEC:  # ISO 2022 IR 6: ASCII (Python's "iso8859" is latin-1)
        return char.isascii()
    try:
        char.encode(codec)
    except (UnicodeError, LookupError):
        return False
    return True


def _character_set(ds: Dataset) -> list[str]:
    """Set ``ds``'s Specific Character Set to what results declare; the codecs of its text."""
    elem = ds.get(_CHARSET_TAG)
    texts = texts_of(elem.value) if elem is not None else []
    declared, codecs = declared_character_set(texts or [])
    if elem is None:
        return codecs
    if declared is None:
        del ds[_CHARSET_TAG]
        if any(texts or []):
            logger.debug("source SpecificCharacterSet left out: no term fits the decoded text")
    elif (declared if isinstance(declared, list) else [declared]) != texts:
        ds.SpecificCharacterSet = declared
        logger.debug("source SpecificCharacterSet corrected to the terms of its decoding")
    return codecs


def sanitize(ds: Dataset, required: Collection[str] = (), kept: Collection[str] = ()
             ) -> Dataset:
    """Check every element of ``ds`` (changed in place: the caller's own copy) against its VR,
    VM and the result IOD; see the module's docstring. ``required``: keywords results need
    (Type 2), emptied rather than left out; ``kept``: keywords checked elsewhere (the
    identity UIDs, by the gate), left as they are. Returns ``ds``."""
    checker = _Checker(_character_set(ds))
    skip = {_CHARSET_TAG, *(Tag(keyword) for keyword in kept)}
    for tag in list(ds.keys()):
        if tag in skip:
            continue
        keyword = keyword_for_tag(tag) or str(tag)
        cleaned, why = checker.element(ds, tag)
        if cleaned is not None and keyword not in required and _empty(cleaned.value):
            cleaned, why = None, "empty (a conditional attribute may not be)"
        if cleaned is ds.get_item(tag):
            continue
        if cleaned is not None:
            ds[tag] = cleaned
            if why:
                logger.debug("source %s %s", keyword, why)
        elif keyword in required:
            ds[tag] = DataElement(tag, dictionary_VR(tag), None)
            logger.debug("source %s emptied: %s", keyword, why)
        else:
            del ds[tag]
            logger.debug("source %s left out: %s", keyword, why)
    conform_modules(ds)
    return ds
