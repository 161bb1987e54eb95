"""Real trained networks and real scans that ship inside registry packages (no downloads)."""
