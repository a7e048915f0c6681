"""The shipped scenario YAML files (installed as ``fedabd.scenarios``; see ``fedabd scenarios list``)."""
