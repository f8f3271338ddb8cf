"""De-identification of training text: detectors find spans, operations replace them, a report counts them."""
from fastlm.data.deid.detectors import DETECTORS, Span, detect, detect_batch
from fastlm.data.deid.operations import OPERATIONS, deidentify_text, deidentify_texts

__all__ = ["DETECTORS", "OPERATIONS", "Span", "deidentify_text", "deidentify_texts", "detect", "detect_batch"]
