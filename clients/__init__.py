"""Flower ClientApp of fedabd (installed as ``fedabd.clients``)."""
