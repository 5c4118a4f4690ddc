"""Folder inference: planning the files, reading and checking inputs, inverting to each input's grid, writing."""
