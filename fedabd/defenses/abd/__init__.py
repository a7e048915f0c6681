"""ABD (Anti-Backdoor data-free KD): Shuffling Vaccine (SV) and Self-Retrospection (SR)."""
from .shuffle import build_shuffled_teacher, shuffle_layers, shuffled_copy
from .sv import (SVConfig, ShufflingVaccine, detector_report, ood_weights, suspicious_mask_and_divergence, sv_loss,
                 tail_fraction)

__all__ = ["SVConfig", "ShufflingVaccine", "build_shuffled_teacher", "detector_report", "ood_weights",
           "shuffle_layers", "shuffled_copy", "suspicious_mask_and_divergence", "sv_loss", "tail_fraction"]
