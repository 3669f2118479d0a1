"""What ``predict`` writes beside ``result.json``: explanation files and DICOM results."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from domain import check_explain
from inference import LoadedModel, Scored
from node.core.pipeline import Pipeline
from node.core.scoring import region_document

logger = logging.getLogger(__name__)

Extra = Callable[[Scored, Path, dict[str, Any]], None]


def output_extras(model: LoadedModel, explain: str, sanity: bool = False,
                  parametric_map: bool = False) -> list[Extra]:
    """The per-image steps after prediction, set up once for the whole run.

    For each image: the explanation (``heatmap.png``, ``heatmap.npy``, of the most probable
    explained finding), then the SR, the heat-map secondary capture and, with
    ``parametric_map``, the parametric map (``sr.dcm``, ``heatmap_sc.dcm``,
    ``heatmap_pm.dcm``; DICOM sources only). ``result.json`` records what was written and the
    outlined regions.
    """
    check_explain(explain)
    pipeline = Pipeline(model, explain, sanity=sanity, parametric_map=parametric_map)

    def extra(scored: Scored, folder: Path, result: dict[str, Any]) -> None:
        from explain import write_outputs

        outcome = pipeline.complete(scored)
        if outcome.heatmap is not None:
            result["explanation"] = outcome.heatmap.summary()
            written = write_outputs(outcome.heatmap, scored.image, folder)
            result["explanation"]["files"] = [p.name for p in written]
            result["regions"] = [region_document(r) for r in outcome.regions]
        elif outcome.explain_error is not None:
            result["explanation"] = {"method": explain, "error": outcome.explain_error}
        if outcome.results is not None:
            files = outcome.results.write(folder)
            result["dicom"] = {kind: {"file": path.name,
                                      "sop_instance_uid": str(outcome.objects[kind].SOPInstanceUID)}
                               for kind, path in files.items()}
            if outcome.results.heatmap_note:
                result["dicom"]["note"] = outcome.results.heatmap_note

    return [extra]
