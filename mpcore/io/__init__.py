"""Files in and out: videos, atomic writes, manifests, prompt lists, checkpoint reading."""
