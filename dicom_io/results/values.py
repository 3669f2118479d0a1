"""One value of a source element checked against its VR: corrected where it has one
reading, else refused (None). :mod:`dicom_io.results.sanitize` applies these per element.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Callable

from pydicom.valuerep import format_number_as_ds

#: Text VRs (the character set applies) and their longest values in bytes (UC, UT: no limit).
TEXT_MAX = {"SH": 16, "LO": 64, "PN": 64, "ST": 1024, "LT": 10240, "UC": 0, "UT": 0}
#: VRs whose one value may hold a backslash (VM is always 1), and whose leading blanks count.
SINGLE_VALUE_VRS = frozenset({"ST", "LT", "UT", "UR"})
_NUMERIC = re.compile(r"[+-]?(\d+|\d+\.\d*|\.\d+)([eE][+-]?\d+)?")
_INTEGER = re.compile(r"[+-]?\d+")
_INTEGRAL = re.compile(r"([+-]?\d+)\.0*")
#: A UID (PS3.5 9.1) under an OID root arc (0, 1 or 2; under 0 and 1, arcs below 40).
_UID = re.compile(r"([01]\.([0-9]|[1-3][0-9])|2\.(0|[1-9][0-9]*))(\.(0|[1-9][0-9]*))*")
_CS = re.compile(r"[A-Z0-9 _]*")
_AE = re.compile(r"[\x20-\x5b\x5d-\x7e]*")
_UR = re.compile(r"[A-Za-z0-9_:/?#\[\]@!$&'()*+,;=%\-.~]*")
_AS = re.compile(r"(\d{1,3}) ?([DWMY]?)")
_DA = re.compile(r"(\d{4})([-./]?)(\d\d)\2(\d\d)")
_TM = re.compile(r"(\d\d)(?:(:?)(\d\d)(?:\2(\d\d)(\.\d{1,6})?)?)?")
_DT = re.compile(r"(\d{4})(?:(\d\d)(?:(\d\d)(?:(\d\d)(?:(\d\d)(?:(\d\d)(\.\d{1,6})?)?)?)?)?)?"
                 r"([+-]\d{4})?")
_ISO_DT = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d)(\.\d{1,6})?)?)?")


def _as(text: str) -> str | None:
    m = _AS.fullmatch(text.strip().upper())
    return f"{int(m[1]):03d}{m[2] or 'Y'}" if m else None  # a bare number of years: 62 -> 062Y


def _date(year: str, month: str | None, day: str | None) -> bool:
    """A calendar date of the years 1000 to 2999 (dciodvfy's range: no radiograph is older,
    and a later year is a broken value)."""
    if not 1000 <= int(year) <= 2999:
        return False
    try:
        datetime.date(int(year), int(month or 1), int(day or 1))
    except ValueError:
        return False
    return True


def _clock(hour: str | None, minute: str | None, second: str | None) -> bool:
    """Hours, minutes and seconds in range (no leap second: dciodvfy refuses 60)."""
    return int(hour or 0) <= 23 and int(minute or 0) <= 59 and int(second or 0) <= 59


def _da(text: str) -> str | None:
    m = _DA.fullmatch(text.strip())
    return m[1] + m[3] + m[4] if m and _date(m[1], m[3], m[4]) else None


def _tm(text: str) -> str | None:
    m = _TM.fullmatch(text.strip())
    if not m or not _clock(m[1], m[3], m[4]):
        return None
    return "".join(part or "" for part in (m[1], m[3], m[4], m[5]))


def _dt(text: str) -> str | None:
    text = text.strip()
    m = _DT.fullmatch(text)
    parts = m.groups() if m else None
    if parts is None and (iso := _ISO_DT.fullmatch(text)):
        parts = (*iso.groups(), None)
    if parts is None:
        return None
    year, month, day, hour, minute, second, _, offset = parts
    if not (_date(year, month, day) and _clock(hour, minute, second)):
        return None
    if offset and not (int(offset[1:3]) <= 14 and int(offset[3:]) <= 59):
        return None
    return "".join(part or "" for part in parts)


def decimal_string(text: str) -> str | None:
    """``text`` as a valid DS (blanks off, past 16 characters re-written), or None."""
    text = text.strip()
    if not _NUMERIC.fullmatch(text):
        return None
    if len(text) <= 16:
        return text
    number = float(text)  # the same number in 16 characters
    return format_number_as_ds(number) if math.isfinite(number) else None


def _is(text: str) -> str | None:
    text = text.strip()
    if m := _INTEGRAL.fullmatch(text):
        text = m[1]  # 12.0 is the integer 12
    if not _INTEGER.fullmatch(text) or not -(2**31 - 1) <= int(text) <= 2**31 - 1:
        return None
    return text if len(text) <= 12 else str(int(text))


def _matching(pattern: re.Pattern[str], longest: int, text: str) -> str | None:
    return text if len(text) <= longest and pattern.fullmatch(text) else None


CHECKS: dict[str, Callable[[str], str | None]] = {
    "AS": _as, "DA": _da, "TM": _tm, "DT": _dt, "DS": decimal_string, "IS": _is,
    "UI": lambda text: _matching(_UID, 64, text.strip(" \x00")),
    "CS": lambda text: _matching(_CS, 16, text.strip().upper()),
    "AE": lambda text: _matching(_AE, 16, text.strip()),
    "UR": lambda text: _matching(_UR, 2**32 - 2, text.rstrip(" ")),
}
STRING_VRS = frozenset(CHECKS) | frozenset(TEXT_MAX)
