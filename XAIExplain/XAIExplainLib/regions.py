"""Region results: a ranked table node and a label map whose colour table names the regions.

The rows are the engine's region records (``id``, ``name``, ``volume_ml``, ``score``,
``rank`` and more: an Attribution's ``regions``); the labels are a label volume on
the input grid (an engine Volume, an array, or an existing label map node).
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np

from .volumenodes import addVolumeNode, arrayFromNode, ijkToRas

REGION_COLUMNS = ("region id", "region", "volume", "score", "rank")
REGIONS_REFERENCE = "XAIExplainRegions"
LABELS_REFERENCE = "XAIExplainLabels"
TABLE_LAYOUTS = (34, 35, 38)  # Slicer's layouts with a table view: four-up + table, 3D + table, four-up + plot + table


@dataclass
class RegionRow:
    id: int
    name: str
    volume_ml: float
    score: float
    rank: int


def _number(value, kind=float):
    """A CSV/JSON cell as a number; empty or None (a region that was not scored) is NaN, or rank 0."""
    if value in (None, ""):
        return float("nan") if kind is float else 0
    return kind(float(value)) if kind is int else kind(value)


def asRows(rows) -> list[RegionRow]:
    """RegionRows from RegionRows, dicts (extra keys ignored) or (id, name, volume_ml, score, rank) tuples, by rank."""
    out = []
    for row in rows:
        if isinstance(row, RegionRow):
            out.append(row)
            continue
        if isinstance(row, dict):
            row = (row["id"], row["name"], row["volume_ml"], row.get("score"), row.get("rank"))
        i, name, volume, score, rank = row
        out.append(RegionRow(_number(i, int), str(name), _number(volume), _number(score), _number(rank, int)))
    return sorted(out, key=lambda r: (r.rank <= 0, r.rank))


def addRegionTable(scene, rows, name: str = "XAIExplain regions"):
    """A table node: region id, region, volume (ml), score, rank; one row per region, best rank first."""
    import vtk

    rows = asRows(rows)
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    columns = [vtk.vtkIntArray(), vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkDoubleArray(),
               vtk.vtkIntArray()]
    for column, title in zip(columns, REGION_COLUMNS):
        column.SetName(title)
    for row in rows:
        columns[0].InsertNextValue(row.id)
        columns[1].InsertNextValue(row.name)
        columns[2].InsertNextValue(row.volume_ml)
        columns[3].InsertNextValue(row.score)
        columns[4].InsertNextValue(row.rank)
    for column in columns:
        table.AddColumn(column)
    table.SetColumnUnitLabel("volume", "ml")
    table.SetColumnDescription("score", "importance of the region for the explained output")
    table.SetColumnDescription("rank", "1 = most important")
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetLocked(True)  # a result, not a form
    return table


def addComparisonTable(scene, tables, name: str = "XAIExplain regions compared"):
    """One table node of several results' regions side by side: ``tables`` is [(method, rows)], the rows in
    the first method's rank order, a score and a rank column per method (empty where a method lacks a region)."""
    import vtk

    first = asRows(tables[0][1])
    table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(name))
    ids, names = vtk.vtkIntArray(), vtk.vtkStringArray()
    ids.SetName("region id")
    names.SetName("region")
    for row in first:
        ids.InsertNextValue(row.id)
        names.InsertNextValue(row.name)
    table.AddColumn(ids)
    table.AddColumn(names)
    for method, rows in tables:
        byId = {row.id: row for row in asRows(rows)}
        scores, ranks = vtk.vtkDoubleArray(), vtk.vtkIntArray()
        scores.SetName(f"{method} score")
        ranks.SetName(f"{method} rank")
        for row in first:
            other = byId.get(row.id)
            scores.InsertNextValue(other.score if other is not None else float("nan"))
            ranks.InsertNextValue(other.rank if other is not None else 0)
        table.AddColumn(scores)
        table.AddColumn(ranks)
        table.SetColumnDescription(f"{method} rank", "1 = most important for this method; 0 = not scored")
    table.SetUseColumnTitleAsColumnHeader(True)
    table.SetLocked(True)
    return table


def regionRowsFromTable(table) -> list[RegionRow]:
    t = table.GetTable()
    rows = []
    for r in range(t.GetNumberOfRows()):
        values = [t.GetValueByName(r, title) for title in REGION_COLUMNS]
        rows.append(RegionRow(values[0].ToInt(), values[1].ToString(), values[2].ToDouble(), values[3].ToDouble(),
                              values[4].ToInt()))
    return rows


def colorNames(labelNode) -> dict[int, str]:
    """{label: name} from a label map node's colour table (entries without a name are left out)."""
    display = labelNode.GetDisplayNode()
    colours = display.GetColorNode() if display is not None else None
    if colours is None:
        return {}
    names = {}
    for i in range(1, colours.GetNumberOfColors()):
        name = colours.GetColorName(i)
        if name and name != "(none)":
            names[i] = name
    return names


def distinctColor(index: int) -> tuple[float, float, float]:
    """Well-separated hues (golden-ratio steps), alternating brightness."""
    hue = (index * 0.618033988749895) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.65, 0.95 if index % 2 else 0.75)


def addRegionColorTable(scene, names: dict[int, str], name: str = "XAIExplain region names"):
    """A colour table whose entry ``id`` is named after region ``id``; entry 0 (background) is transparent."""
    colours = scene.AddNewNodeByClass("vtkMRMLColorTableNode", scene.GenerateUniqueName(name))
    colours.SetTypeToUser()
    top = max(names) if names else 0
    colours.SetNumberOfColors(top + 1)
    colours.GetLookupTable().SetTableRange(0, top)
    colours.SetColor(0, "background", 0.0, 0.0, 0.0, 0.0)
    for label in range(1, top + 1):
        r, g, b = distinctColor(label)
        if label in names:
            colours.SetColor(label, names[label], r, g, b, 1.0)
        else:
            colours.SetColor(label, "", 0.0, 0.0, 0.0, 0.0)
            colours.SetColorDefined(label, False)
    colours.SetAttribute("Category", "XAIExplain")
    return colours


def addRegionLabelMap(scene, labels, names: dict[int, str], reference, name: str = "XAIExplain regions labels"):
    """A label map node on ``reference``'s grid with the region names as its colour table."""
    array = labels.array[0] if hasattr(labels, "array") else np.asarray(labels)
    if array.ndim == 4:
        array = array[0]
    node = addVolumeNode(scene, array.astype(np.int16), name, reference=reference,
                         className="vtkMRMLLabelMapVolumeNode")
    node.CreateDefaultDisplayNodes()
    colours = addRegionColorTable(scene, {int(k): v for k, v in names.items()}, f"{node.GetName()} names")
    node.GetDisplayNode().SetAndObserveColorNodeID(colours.GetID())
    return node


def regionCenter(labelNode, regionId: int) -> np.ndarray | None:
    """RAS centre (mean voxel position) of a region of a label map node; None if it has no voxel."""
    labels = arrayFromNode(labelNode)[0]
    where = np.argwhere(labels == int(regionId))
    if len(where) == 0:
        return None
    ijk = np.append(where.mean(axis=0), 1.0)
    ras = ijkToRas(labelNode) @ ijk
    transform = labelNode.GetParentTransformNode()
    if transform is not None:  # the node is under a transform: follow it to world
        import vtk

        toWorld = vtk.vtkGeneralTransform()
        transform.GetTransformToWorld(toWorld)
        return np.array(toWorld.TransformPoint(ras[:3]))
    return ras[:3]


def centerViewsOnRegion(scene, labelNode, regionId: int) -> np.ndarray | None:
    """Centre every slice view on a region (what clicking a row of the region table does)."""
    import slicer

    center = regionCenter(labelNode, regionId)
    if center is not None:
        slicer.vtkMRMLSliceNode.JumpAllSlices(scene, *center, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
    return center


def linkRegions(resultNode, table, labelNode=None) -> None:
    """Remember which table and label map belong to a result (saved with the scene)."""
    resultNode.SetNodeReferenceID(REGIONS_REFERENCE, table.GetID())
    if labelNode is not None:
        table.SetNodeReferenceID(LABELS_REFERENCE, labelNode.GetID())


def regionLabelMap(scene, source, reference):
    """A named label map for region methods: ``source`` itself, or a segmentation exported on ``reference``'s grid.

    An export (segment names become its colour table) is a new node and is kept: it is the region map shown.
    """
    if source.IsA("vtkMRMLLabelMapVolumeNode"):
        return source
    if not source.IsA("vtkMRMLSegmentationNode"):
        raise ValueError(f"'{source.GetName()}' is neither a label map nor a segmentation")
    import slicer

    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", scene.GenerateUniqueName(f"{source.GetName()} labels"))
    if not slicer.vtkSlicerSegmentationsModuleLogic.ExportVisibleSegmentsToLabelmapNode(source, labels, reference):
        scene.RemoveNode(labels)
        raise ValueError(f"cannot turn segmentation '{source.GetName()}' into regions on the input grid")
    return labels


def showRegionTable(appLogic, table) -> None:
    """Make ``table`` the one Slicer's table views show, switching to a layout with a table view if need be."""
    import slicer

    appLogic.GetSelectionNode().SetActiveTableID(table.GetID())
    appLogic.PropagateTableSelection()
    layout = table.GetScene().GetFirstNodeByClass("vtkMRMLLayoutNode")
    if layout is not None and layout.GetViewArrangement() not in TABLE_LAYOUTS:
        layout.SetViewArrangement(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpTableView)
