"""Data of the bundles: releases and their datalists, splits, input checks, slice geometry, synthetic releases."""
