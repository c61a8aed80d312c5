"""Data: the episode contract, Minari I/O, collection and the window slicer."""
