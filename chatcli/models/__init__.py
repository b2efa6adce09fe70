"""Model names to files: the store, name resolution, the GGUF header reader, Modelfiles,
the catalog of installed models, pull. Uses ``core`` only.
"""
