"""Export formats (one function per format), the exported files' runtime and their numerical verification."""
