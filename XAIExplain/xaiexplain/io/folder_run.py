"""One case explained into one output folder: what ``xaiexplain explain`` does, and each case of a cohort."""
from __future__ import annotations

from ..core.explain import explain
from ..core.targets import is_roi_keyword
from ..core.volume import read_volume
from .outputs import write_results


def case_regions(volume, spec: dict | None):
    """The regions ``spec`` names on ``volume``: {"atlas": "harvard-oxford", "registration", "threshold"},
    {"labels": FILE, "names": FILE}, {"supervoxels": N}; None or {}: none."""
    from ..regions import harvard_oxford_regions, label_regions, supervoxel_regions

    spec = spec or {}
    if spec.get("atlas"):
        return harvard_oxford_regions(volume, registration=spec.get("registration", "affine"),
                                      threshold=spec.get("threshold", 25.0))
    if spec.get("labels"):
        return label_regions(spec["labels"], spec.get("names"), volume)
    if spec.get("supervoxels") is not None:
        return supervoxel_regions(volume, n_segments=spec["supervoxels"])
    return None


def explain_to_folder(model, inputs, out, *, roi=None, outline=None, regions: dict | None = None,
                      previews: bool = True, report: bool = False, overwrite: bool = False,
                      summary_extra: dict | None = None, progress=None, **settings):
    """Read ``inputs`` (the case's channels), explain ``model`` on them (``settings``: :func:`explain`'s
    keywords) and write the results into ``out``, all or nothing. ``roi``: a mask file, 'predicted' or
    'component:N'; ``outline``: a mask file drawn in the previews (default: the ROI mask); ``regions``: a
    :func:`case_regions` spec. Returns (results, written files)."""
    volumes = [read_volume(path) for path in inputs]
    # a mask file is read once: explained as the ROI and drawn as the previews' outline
    roi = roi if roi is None or is_roi_keyword(roi) else read_volume(roi)
    outline = read_volume(outline) if outline else None if isinstance(roi, str) else roi
    results = explain(model, volumes, roi=roi, regions=case_regions(volumes[0], regions), progress=progress,
                      **settings)
    written = write_results(out, volumes[0], results, {"inputs": [str(p) for p in inputs], **(summary_extra or {})},
                            previews=previews, overwrite=overwrite, outline=outline, report=report)
    return results, written
