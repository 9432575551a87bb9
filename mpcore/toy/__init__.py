"""The procedural toy world (clips, captions, masks) and its exact object measures."""
