"""Shared code of the bundles: the method core and its data, training, inference and evaluation wings (see README)."""
