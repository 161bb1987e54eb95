"""A headless Slicer: scene, application and module logics, one slice view and one 3D view.

Built from the ``slicer-core`` wheel (Slicer's own C++ MRML, logic and displayable
managers, no Qt) and rendered offscreen (EGL) to numpy arrays / PNG files. What
this needs on a machine without a display (see DESIGN.md):

- the displayable-manager factories are process-wide singletons: point them at
  this harness's application logic, and create the harness once per process
  (slice and view nodes are reused, never duplicated);
- the wheel has no volume-rendering presets, so only float volumes are volume
  rendered here, with CPU ray casting;
- teardown order matters: the colour logic removes its nodes when it is
  destroyed, which notifies the slice logic, so it goes first.
"""
from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
# The module's Slicer-side package (XAIExplainLib) sits beside the engine in XAIExplain/, as Slicer installs it.
MODULE_DIR = Path(__file__).resolve().parent.parent / "XAIExplain"
if str(MODULE_DIR) not in sys.path:
    sys.path.insert(0, str(MODULE_DIR))

import numpy as np  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402

SLICE_MANAGERS = ("vtkMRMLColorLegendDisplayableManager",)
THREED_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                   "vtkMRMLVolumeRenderingDisplayableManager", "vtkMRMLColorLegendDisplayableManager")


def _offscreenWindow(size):
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.SetMultiSamples(0)
    renderer = vtk.vtkRenderer()
    window.AddRenderer(renderer)
    interactor = vtk.vtkRenderWindowInteractor()  # some displayable managers expect one
    interactor.SetRenderWindow(window)
    return window, renderer, interactor


def _capture(window) -> np.ndarray:
    from XAIExplainLib.trust import windowPixels

    return windowPixels(window)


def savePng(pixels: np.ndarray, path) -> None:
    from PIL import Image

    Image.fromarray(pixels).save(str(path))


class SlicerHarness:
    """One scene with the logics the module uses, a Red (axial) slice view and a 3D view.

    Use :meth:`shared`: one harness per process (the displayable-manager factories are singletons).
    """

    _shared = None

    @classmethod
    def shared(cls) -> "SlicerHarness":
        if cls._shared is None or cls._shared._closed:
            cls._shared = cls()
        return cls._shared

    def __init__(self, sliceSize=(320, 320), viewSize=(320, 320)):
        self.scene = slicer.vtkMRMLScene()
        self.appLogic = slicer.vtkSlicerApplicationLogic()
        self.appLogic.SetMRMLScene(self.scene)
        self.colorLogic = slicer.vtkSlicerColorLogic()
        self.colorLogic.SetMRMLApplicationLogic(self.appLogic)
        self.colorLogic.SetMRMLScene(self.scene)
        self.volumesLogic = slicer.vtkSlicerVolumesLogic()
        self.volumesLogic.SetMRMLApplicationLogic(self.appLogic)
        self.volumesLogic.SetMRMLScene(self.scene)
        self.vrLogic = slicer.vtkSlicerVolumeRenderingLogic()
        self.vrLogic.SetMRMLApplicationLogic(self.appLogic)
        self.vrLogic.SetMRMLScene(self.scene)
        self.vrLogic.SetDefaultRenderingMethod("vtkMRMLCPURayCastVolumeRenderingDisplayNode")
        for name, logic in (("Colors", self.colorLogic), ("Volumes", self.volumesLogic),
                            ("VolumeRendering", self.vrLogic)):
            self.appLogic.SetModuleLogic(name, logic)

        # Red slice view: Slicer's slice logic reslices, colours and blends the layers; the
        # blended image is drawn 1:1 and displayable managers draw on top, as in a slice widget.
        self.sliceLogic = slicer.vtkMRMLSliceLogic()
        self.sliceLogic.SetMRMLApplicationLogic(self.appLogic)
        self.sliceLogic.SetMRMLScene(self.scene)
        self.sliceNode = self.sliceLogic.AddSliceNode("Red")
        # Registered with the application logic, as the layout manager does: displayable managers (the colour
        # legend's) find a view's composite node through it. Before the managers are created.
        self._sliceLogics = vtk.vtkCollection()
        self._sliceLogics.AddItem(self.sliceLogic)
        self.appLogic.SetSliceLogics(self._sliceLogics)
        self.sliceNode.SetOrientationToAxial()
        self.sliceNode.SetDimensions(sliceSize[0], sliceSize[1], 1)
        self.sliceWindow, self.sliceRenderer, self._sliceInteractor = _offscreenWindow(sliceSize)
        self._sliceMapper = vtk.vtkImageMapper()
        self._sliceMapper.SetColorWindow(255)
        self._sliceMapper.SetColorLevel(127.5)
        self._sliceActor = vtk.vtkActor2D()
        self._sliceActor.SetMapper(self._sliceMapper)
        self.sliceRenderer.AddViewProp(self._sliceActor)
        sliceFactory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        sliceFactory.SetMRMLApplicationLogic(self.appLogic)
        for name in SLICE_MANAGERS:
            if not sliceFactory.IsDisplayableManagerRegistered(name):
                sliceFactory.RegisterDisplayableManager(name)
        self.sliceManagers = sliceFactory.InstantiateDisplayableManagers(self.sliceRenderer)
        self.sliceManagers.SetMRMLDisplayableNode(self.sliceNode)

        # 3D view
        self.viewLogic = slicer.vtkMRMLViewLogic()
        self.viewLogic.SetMRMLApplicationLogic(self.appLogic)
        self.viewLogic.SetMRMLScene(self.scene)
        self.viewNode = self.viewLogic.AddViewNode("1")
        self.viewNode.SetBoxVisible(0)
        self.viewNode.SetAxisLabelsVisible(0)
        self.viewWindow, self.viewRenderer, self._viewInteractor = _offscreenWindow(viewSize)
        viewFactory = slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance()
        viewFactory.SetMRMLApplicationLogic(self.appLogic)
        for name in THREED_MANAGERS:
            if not viewFactory.IsDisplayableManagerRegistered(name):
                viewFactory.RegisterDisplayableManager(name)
        self.viewManagers = viewFactory.InstantiateDisplayableManagers(self.viewRenderer)
        self.viewManagers.SetMRMLDisplayableNode(self.viewNode)
        self._closed = False
        atexit.register(self.close)

    # -- views ---------------------------------------------------------------------------------------
    def fitSlice(self) -> None:
        self.sliceLogic.FitSliceToAll()

    def renderSlice(self, path=None) -> np.ndarray:
        # The logic rebuilds its pipeline as layers change (a slice widget re-reads it on every change).
        self._sliceMapper.SetInputConnection(self.sliceLogic.GetImageDataConnection())
        self.sliceRenderer.ResetCameraClippingRange()
        self.sliceWindow.Render()
        pixels = _capture(self.sliceWindow)
        if path is not None:
            savePng(pixels, path)
        return pixels

    def sliceXYToRAS(self, x: float, y: float) -> np.ndarray:
        """Physical point under a pixel of the slice view (x right, y up: VTK's display convention)."""
        xyToRas = self.sliceNode.GetXYToRAS()
        return np.array(xyToRas.MultiplyPoint((x, y, 0, 1))[:3])

    def lookFrom(self, direction: str = "anterior", distance: float = 600.0, center=(0.0, 0.0, 0.0)) -> None:
        """Put the 3D view's camera on an axis, looking at ``center``, parallel projection."""
        camera = self.viewRenderer.GetActiveCamera()
        axis = {"anterior": (0, 1, 0), "superior": (0, 0, 1), "left": (-1, 0, 0), "right": (1, 0, 0)}[direction]
        camera.SetFocalPoint(*center)
        camera.SetPosition(*(np.asarray(center) + distance * np.asarray(axis)))
        camera.SetViewUp(*((0, 0, 1) if direction != "superior" else (0, 1, 0)))
        camera.SetParallelProjection(1)
        self.viewRenderer.ResetCameraClippingRange()

    def render3D(self, path=None, parallelScale: float | None = None) -> np.ndarray:
        if parallelScale is not None:
            self.viewRenderer.GetActiveCamera().SetParallelScale(parallelScale)
        self.viewRenderer.ResetCameraClippingRange()
        self.viewWindow.Render()
        pixels = _capture(self.viewWindow)
        if path is not None:
            savePng(pixels, path)
        return pixels

    def worldToViewPixel(self, ras) -> tuple[int, int]:
        """(row, column) of a RAS point in the 3D view's image (row 0 at the top)."""
        coordinate = vtk.vtkCoordinate()
        coordinate.SetCoordinateSystemToWorld()
        coordinate.SetValue(*[float(v) for v in ras])
        x, y = coordinate.GetComputedDisplayValue(self.viewRenderer)
        return self.viewWindow.GetSize()[1] - 1 - int(y), int(x)

    # -- scenes on disk ------------------------------------------------------------------------------
    def saveMRB(self, path) -> None:
        messages = slicer.vtkMRMLMessageCollection()
        if not self.scene.WriteToMRB(str(path), None, messages):
            raise RuntimeError(f"cannot write {path}: {messages.GetAllMessagesAsString()}")

    def loadMRB(self, path) -> None:
        """Replace the data nodes by a saved bundle's (as File > Load Scene does): same scene, same logics."""
        if self.scene.GetDataIOManager() is None:  # extracting a bundle goes through the cache manager
            import tempfile

            self._cacheDir = tempfile.TemporaryDirectory(prefix="xaiexplain-mrb-cache-")
            cache = slicer.vtkCacheManager()
            cache.SetRemoteCacheDirectory(self._cacheDir.name)
            io = slicer.vtkDataIOManager()
            io.SetCacheManager(cache)
            self.scene.SetDataIOManager(io)
        self.clear()
        messages = slicer.vtkMRMLMessageCollection()
        if not self.scene.ReadFromMRB(str(path), False, messages):
            raise RuntimeError(f"cannot read {path}: {messages.GetAllMessagesAsString()}")

    # -- lifecycle -----------------------------------------------------------------------------------
    def clear(self) -> None:
        """Remove the data nodes; the singleton view, slice, camera and colour nodes stay."""
        self.scene.Clear(0)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.sliceManagers.SetMRMLDisplayableNode(None)
        self.viewManagers.SetMRMLDisplayableNode(None)
        self.scene.Clear(1)
        # The colour logic notifies other logics as it goes: destroy it while they still exist.
        self.colorLogic.SetMRMLScene(None)
        del self.colorLogic
        for logic in (self.vrLogic, self.volumesLogic, self.sliceLogic, self.viewLogic):
            logic.SetMRMLScene(None)
