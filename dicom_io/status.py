"""DICOM status codes the node answers with (PS3.4 Annex B C-STORE statuses, which STOW-RS
also uses as Failure Reasons, PS3.18 Table 10.5.3-2), named once for both fronts."""

SUCCESS = 0x0000
#: Refused: out of resources (no room to store it, or the queue is full).
OUT_OF_RESOURCES = 0xA700
#: Error: data set does not match SOP class (STOW-RS also: not of the target study).
DATASET_DOES_NOT_MATCH = 0xA900
#: Error: cannot understand (not readable as DICOM, or its UIDs contradict the request).
CANNOT_UNDERSTAND = 0xC000
#: Failure: SOP class not supported (STOW-RS Failure Reason).
SOP_CLASS_NOT_SUPPORTED = 0x0122
#: Failure: processing failure (a fault of the node with this object).
PROCESSING_FAILURE = 0x0110
#: Statuses a C-STORE SCU may treat as stored (success and the warnings of PS3.4 B.2.3).
STORED = frozenset({SUCCESS, 0xB000, 0xB006, 0xB007})
