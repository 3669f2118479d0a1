"""Byte stencils: the SR's finding items encoded once per label, filled per image.

Building and encoding the 26 findings' items (a CODE item with two NUMs each) is most of an
SR's cost. An item differs between images only in a few values, so each label's item is
built **once** with highdicom from synthetic values (never from an image), encoded as
Explicit VR Little Endian, and cut into constant bytes and *slots*. Per image the slots are
filled and the lengths of the enclosing sequences and items recomputed: no highdicom object,
no pydicom writer.

Safety: a stencil holds only the synthetic values it was made from, so it cannot carry one
patient's data into another's report. It is checked when made (every slot found exactly
once, no synthetic value left in the constant bytes, and filling the synthetic values
gives back the original bytes), and the tests compare whole SRs built through stencils
with SRs built entirely by highdicom, byte for byte.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from pydicom.charset import default_encoding
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.valuerep import DS

ITEM_TAG = b"\xfe\xff\x00\xe0"
#: VRs whose Explicit VR header has a 4-byte length (PS3.5 7.1.2).
LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})
UNDEFINED = 0xFFFFFFFF

#: Slot tags: (group, element) of the elements a stencil fills per image.
TAG_NUMERIC_VALUE = (0x0040, 0xA30A)  # DS
TAG_FLOATING_POINT_VALUE = (0x0040, 0xA161)  # FD


class StencilError(ValueError):
    """A stencil could not be made: the encoded template is not what was expected."""


def _tag_bytes(tag: tuple[int, int]) -> bytes:
    return struct.pack("<HH", *tag)


def ds_text(value: float) -> str:
    """A decimal string as highdicom writes a float (``DS(value, auto_format=True)``)."""
    ds = DS(value, auto_format=True)
    return getattr(ds, "original_string", None) or str(ds)


def ds_element(tag: tuple[int, int], value: float) -> bytes:
    text = ds_text(value).encode("ascii")
    if len(text) % 2:
        text += b" "
    return _tag_bytes(tag) + b"DS" + struct.pack("<H", len(text)) + text


def fd_element(tag: tuple[int, int], value: float) -> bytes:
    return _tag_bytes(tag) + b"FD" + struct.pack("<H", 8) + struct.pack("<d", value)


def encode_item(item: Dataset, charset: str | list[str] = default_encoding) -> bytes:
    """One sequence item as pydicom writes it in Explicit VR LE (defined length), its text
    encoded with ``charset`` (the document's Specific Character Set) unless it has its own."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = False
    write_dataset(fp, item, parent_encoding=charset)
    body = fp.getvalue()
    return ITEM_TAG + struct.pack("<I", len(body)) + body


def _parse(buf: bytes, start: int, end: int) -> list:
    """Explicit VR LE elements (or items) in ``buf[start:end]`` as a tree of nodes.

    A node is constant bytes, a slot's name (after :func:`_mark`), or a container whose
    length is recomputed when filled: ``(header without length, children)``.
    """
    nodes: list = []
    pos = start
    while pos < end:
        tag = buf[pos:pos + 4]
        if tag == ITEM_TAG:
            (length,) = struct.unpack_from("<I", buf, pos + 4)
            if length == UNDEFINED:
                raise StencilError("undefined-length item in template")
            body = pos + 8
            nodes.append((ITEM_TAG, _parse(buf, body, body + length)))
            pos = body + length
            continue
        vr = buf[pos + 4:pos + 6]
        if vr in LONG_VRS:
            (length,) = struct.unpack_from("<I", buf, pos + 8)
            header, body = buf[pos:pos + 8], pos + 12
        else:
            (length,) = struct.unpack_from("<H", buf, pos + 6)
            header, body = buf[pos:pos + 6], pos + 8
        if length == UNDEFINED:
            raise StencilError("undefined-length element in template")
        if vr == b"SQ":
            nodes.append((header, _parse(buf, body, body + length)))
        else:
            nodes.append(buf[pos:body + length])
        pos = body + length
    if pos != end:
        raise StencilError("template lengths do not add up")
    return nodes


def _mark(nodes: list, slots: Mapping[bytes, str], found: dict[str, int]) -> list:
    """Replace leaves equal to a slot's synthetic element by the slot's name; fold the rest."""
    out: list = []
    for node in nodes:
        if isinstance(node, bytes):
            name = slots.get(node)
            if name is not None:
                found[name] = found.get(name, 0) + 1
                out.append(name)
            elif out and isinstance(out[-1], bytes):
                out[-1] += node
            else:
                out.append(node)
        else:
            header, children = node
            marked = _mark(children, slots, found)
            if all(isinstance(c, bytes) for c in marked):  # nothing to fill: constant
                out_bytes = _render_container(header, b"".join(marked))
                if out and isinstance(out[-1], bytes):
                    out[-1] += out_bytes
                else:
                    out.append(out_bytes)
            else:
                out.append((header, marked))
    return out


def _render_container(header: bytes, body: bytes) -> bytes:
    if header == ITEM_TAG:
        return ITEM_TAG + struct.pack("<I", len(body)) + body
    if len(header) == 8:  # long VR: reserved bytes already in the header
        return header + struct.pack("<I", len(body)) + body
    return header + struct.pack("<H", len(body)) + body


def _render(nodes: Sequence, values: Mapping[str, bytes]) -> bytes:
    parts = []
    for node in nodes:
        if isinstance(node, bytes):
            parts.append(node)
        elif isinstance(node, str):
            parts.append(values[node])
        else:
            parts.append(_render_container(node[0], _render(node[1], values)))
    return b"".join(parts)


@dataclass(frozen=True)
class Stencil:
    """An encoded sequence item with named slots; :meth:`fill` gives the item's bytes."""

    nodes: tuple
    slots: frozenset[str]

    @classmethod
    def make(cls, item: Dataset, slots: Mapping[str, bytes],
             synthetic: tuple[bytes, ...] = ()) -> Stencil:
        """Cut ``item`` (built from synthetic values) at ``slots``.

        ``slots`` maps each slot name to the whole encoded element that holds the synthetic
        value (tag, VR, length, value); each must occur exactly once. ``synthetic`` are
        byte strings (the synthetic values themselves) that must not remain in the
        constant bytes.
        """
        encoded = encode_item(item)
        by_bytes = {element: name for name, element in slots.items()}
        if len(by_bytes) != len(slots):
            raise StencilError("two slots share the same synthetic element")
        found: dict[str, int] = {}
        nodes = _mark(_parse(encoded, 0, len(encoded)), by_bytes, found)
        for name in slots:
            if found.get(name) != 1:
                raise StencilError(f"slot {name!r} found {found.get(name, 0)} times, not once")
        stencil = cls(tuple(nodes), frozenset(slots))
        constant = b"".join(n for n in _flatten(nodes) if isinstance(n, bytes))
        for value in synthetic:
            if value in constant:
                raise StencilError(f"synthetic value {value!r} left in constant bytes")
        if stencil.fill(slots) != encoded:
            raise StencilError("stencil does not give back its template")
        return stencil

    def fill(self, values: Mapping[str, bytes]) -> bytes:
        """The item's bytes with each slot's encoded element from ``values``."""
        missing = self.slots.difference(values)
        if missing:
            raise KeyError(f"no value for slot(s) {sorted(missing)}")
        return _render(self.nodes, values)


def _flatten(nodes: list):
    for node in nodes:
        if isinstance(node, tuple):
            yield from _flatten(node[1])
        else:
            yield node


#: Builds one finding's item (a CODE content item with its probability and threshold NUMs)
#: from (p, t, positive).
FindingFactory = Callable[[float, float, bool], Dataset]

_SYN_P = 0.271828
_SYN_T = 0.314159


class FindingStencils:
    """One label's finding item, as a stencil for Present and for Absent."""

    def __init__(self, factory: FindingFactory) -> None:
        self.stencils: dict[bool, Stencil] = {}
        slots = _value_slots(_SYN_P, _SYN_T)
        synthetic = (ds_text(_SYN_P).encode(), ds_text(_SYN_T).encode(),
                     struct.pack("<d", _SYN_P), struct.pack("<d", _SYN_T))
        for positive in (True, False):
            self.stencils[positive] = Stencil.make(factory(_SYN_P, _SYN_T, positive), slots,
                                                   synthetic)

    def fill(self, probability: float, threshold: float, positive: bool) -> bytes:
        """The finding item's bytes."""
        return self.stencils[positive].fill(_value_slots(probability, threshold))


def _value_slots(probability: float, threshold: float) -> dict[str, bytes]:
    """The encoded slots that differ between the findings of one image."""
    return {
        "p_ds": ds_element(TAG_NUMERIC_VALUE, probability),
        "p_fd": fd_element(TAG_FLOATING_POINT_VALUE, probability),
        "t_ds": ds_element(TAG_NUMERIC_VALUE, threshold),
        "t_fd": fd_element(TAG_FLOATING_POINT_VALUE, threshold),
    }


__all__ = ["FindingStencils", "Stencil", "StencilError", "encode_item"]
