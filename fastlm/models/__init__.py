"""fastlm.models: the GPT family (GPT-2 / LLaMA style), encoders (BERT / RoBERTa / ALBERT), a ViT vision encoder, the hashed maxent LM and Hugging Face weight import/export."""
from fastlm.models.config import GPTConfig
from fastlm.models.encoder import Encoder, EncoderForMaskedLM, EncoderForSequenceClassification
from fastlm.models.encoder_config import EncoderConfig
from fastlm.models.gpt import GPT, sample_next_token
from fastlm.models.hf import (
                              config_from_hf,
                              config_to_hf,
                              from_hf,
                              is_hf_checkpoint,
                              load_hf_checkpoint,
                              state_dict_from_hf,
                              state_dict_to_hf,
                              to_hf,
)
from fastlm.models.maxent import MaxEntConfig, MaxEntLM
from fastlm.models.recurrent import RecurrentLM
from fastlm.models.recurrent_config import RECURRENT_FAMILIES, RecurrentConfig
from fastlm.models.vision import VisionConfig, VisionEncoder
from fastlm.nn.kv_cache import KVCache

__all__ = ["GPT", "GPTConfig", "Encoder", "EncoderConfig", "EncoderForMaskedLM", "EncoderForSequenceClassification",
           "KVCache", "MaxEntLM", "MaxEntConfig", "RecurrentLM", "RecurrentConfig", "RECURRENT_FAMILIES",
           "sample_next_token", "from_hf", "to_hf", "config_from_hf", "config_to_hf", "load_hf_checkpoint",
           "is_hf_checkpoint", "state_dict_from_hf", "state_dict_to_hf", "VisionConfig", "VisionEncoder"]
