"""Network definitions; every non-underscore module here registers into MODELS / GENERATORS on import."""
