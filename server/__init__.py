"""Flower ServerApp of fedabd (installed as ``fedabd.server``)."""
