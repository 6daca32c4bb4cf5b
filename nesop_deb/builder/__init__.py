"""The build side: turn an app repository's changes into an update package."""
