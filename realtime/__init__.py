"""The streaming engine: audio sources, inference backends, sinks."""
