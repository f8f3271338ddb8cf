"""fastlm.quant: model conversion: post-training int8 quantization, QAT, int8 (SwitchBack) training.

    quantize_model(model, "w8a8" | "w8a16", skip=[...], smooth=None | alpha, calibration_batches=...)
    prepare_qat(model); ...train...; convert(model)
    apply_int8_training(model)                  # [model] linear = "int8_train"
"""
from fastlm.nn.int8_linear import SCHEMES, Int8Linear
from fastlm.quant.int8_training import Int8TrainLinear, apply_int8_training
from fastlm.quant.ptq import quantize_model
from fastlm.quant.qat import FakeQuantLinear, convert, prepare_qat
from fastlm.quant.saved import quantization_record, restore_quantized

__all__ = ["SCHEMES", "Int8Linear", "Int8TrainLinear", "FakeQuantLinear", "apply_int8_training", "quantize_model",
           "prepare_qat", "convert", "quantization_record", "restore_quantized"]
