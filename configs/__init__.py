"""Hydra configuration groups shipped with the package (found by the apps under algorithms/)."""
