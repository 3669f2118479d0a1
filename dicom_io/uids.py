"""SOP classes and markers the node recognises."""

from __future__ import annotations

from pydicom.uid import UID

CR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1")
DX_PRESENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_PROCESSING_STORAGE = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
SECONDARY_CAPTURE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7")
MF_GRAYSCALE_BYTE_SC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7.2")
MF_GRAYSCALE_WORD_SC_STORAGE = UID("1.2.840.10008.5.1.4.1.1.7.3")

#: Projection radiography SOP classes whose images the model reads.
RADIOGRAPH_SOP_CLASSES: frozenset[str] = frozenset(
    {CR_IMAGE_STORAGE, DX_PRESENTATION_STORAGE, DX_PROCESSING_STORAGE}
)
#: Secondary capture SOP classes accepted when their Modality is CR or DX.
SECONDARY_CAPTURE_SOP_CLASSES: frozenset[str] = frozenset(
    {SECONDARY_CAPTURE_STORAGE, MF_GRAYSCALE_BYTE_SC_STORAGE, MF_GRAYSCALE_WORD_SC_STORAGE}
)
#: Every SOP class the node accepts as input.
INPUT_SOP_CLASSES: frozenset[str] = RADIOGRAPH_SOP_CLASSES | SECONDARY_CAPTURE_SOP_CLASSES

#: Manufacturer written into every object this node produces; the gate's routing-loop guard.
NODE_MANUFACTURER = "cxr-node"
