"""Optical flow around the method: estimator evaluation, flow extraction into caches, the caches, colour coding."""
