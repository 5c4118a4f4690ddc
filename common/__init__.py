"""Shared code of the bundle collection: RW maps, losses, transforms, networks, engines helpers."""
