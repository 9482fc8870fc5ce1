"""Thin DVC stage entry points, one per stage; run as `python -m stages.NAME` from the project root
(as a module so that stage names such as `tokenize` do not shadow the standard library)."""
