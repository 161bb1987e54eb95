"""Slicer-side helpers of the XAIExplain module.

Everything here uses MRML and VTK only (no Qt), so it runs and is tested
headless against the ``slicer-core`` wheel. The ``xaiexplain`` engine (and
with it torch) is imported lazily, inside the functions that need it, so that
importing this package never requires the Python dependencies to be installed.
"""
