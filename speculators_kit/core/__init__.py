"""Engine-free core: formats, draft heads, verification math. Imports only torch,
safetensors and pydantic (tests/test_import_boundaries.py keeps it that way)."""
