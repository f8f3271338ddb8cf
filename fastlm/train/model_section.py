"""The [model] section: the chosen family's own config class plus the keys about the run.

`model.family` picks the class, so a gpt2 model takes GPTConfig's keys and a bert model
EncoderConfig's; a key of another family is an error naming it. A new model family registers
its section with one call:

    @dataclass
    class RecurrentSection(ModelSection, RecurrentConfig):
        ARCHITECTURE = RecurrentConfig

    register_model_section(RecurrentSection, "lstm", "gru")
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from fastlm.lm.config import HMMConfig, NGramConfig
from fastlm.models import EncoderConfig, GPTConfig, MaxEntConfig, RecurrentConfig, VisionConfig
from fastlm.models.config import ENCODER_FAMILIES, FAMILIES
from fastlm.train.lora import LoRASection

if TYPE_CHECKING:
    from fastlm.train.config import DataSection

DEFAULT_FAMILY = "gpt2"  # [model] without a family key


@dataclass
class ModelSection:
    """The run keys every family's section adds to its architecture config (subclass it first,
    so that these keys come last in the written config.toml)."""

    # A fastlm run directory (config.toml + model.safetensors) or a Hugging Face checkpoint
    # directory (config.json + safetensors). Its architecture replaces the family's fields.
    init_from: str | None = None
    # Word vectors (word2vec text/binary or safetensors, e.g. a `fastlm embeddings train` run's) to
    # start the token embeddings from: tokens matched by string (fastlm.embeddings.init).
    init_embeddings: str | None = None
    # How the linears train: "default" (float) or "int8_train" (SwitchBack int8 matmuls, applied to
    # the built model by fastlm.quant.apply_int8_training; the weights stay a float nn.Linear's).
    linear: str = "default"
    # LoRA adapters (fastlm.train.lora): an inline table {rank, alpha, dropout, targets}; the base is frozen.
    lora: LoRASection | None = None

    ARCHITECTURE: ClassVar[type]          # the family's plain model config (GPTConfig, ...)
    is_encoder: ClassVar[bool] = False    # a masked-LM encoder: pretrained on [MASK]ed tokens
    is_fitted: ClassVar[bool] = False     # a statistical model fitted on the tokens (no gradient steps)
    SPECIAL_TOKENS: ClassVar[int] = 0     # ids the model needs after the tokenizer's
    data_parallel_only: ClassVar[bool] = False  # no tensor or pipeline parallelism (parallel.tp/pp must be 1)
    carries_state: ClassVar[bool] = False  # data.stateful: a recurrent state carried across consecutive windows

    def architecture(self):
        """The plain model config (e.g. GPTConfig) of these fields, without the run keys."""
        return self.ARCHITECTURE(**{f.name: getattr(self, f.name) for f in fields(self.ARCHITECTURE)})

    @classmethod
    def defaults_from_data(cls, data: DataSection) -> dict[str, Any]:
        """Fields that follow [data] unless [model] sets them: the vocabulary and the context
        (for a family that has these fields)."""
        follow = {"vocab_size": data.vocab_size + cls.SPECIAL_TOKENS, "max_seq_len": data.seq_len}
        return {f.name: follow[f.name] for f in fields(cls) if f.name in follow}


@dataclass
class GPTSection(ModelSection, GPTConfig):
    """[model] of the GPT families (gpt2, llama)."""

    ARCHITECTURE = GPTConfig


@dataclass
class EncoderSection(ModelSection, EncoderConfig):
    """[model] of the masked-LM encoders (bert, roberta, albert)."""

    ARCHITECTURE = EncoderConfig
    is_encoder = True
    SPECIAL_TOKENS = 3  # [MASK], [CLS], [SEP] follow the tokenizer's ids (fastlm.data.masking)


@dataclass
class NGramSection(ModelSection, NGramConfig):
    """[model] of the n-gram models (fastlm.lm.NGramLM), fitted by fastlm.train.statistical."""

    ARCHITECTURE = NGramConfig
    is_fitted = True


@dataclass
class HMMSection(ModelSection, HMMConfig):
    """[model] of the hidden Markov models (fastlm.lm.HMM), fitted by fastlm.train.statistical."""

    ARCHITECTURE = HMMConfig
    is_fitted = True


@dataclass
class MaxEntSection(ModelSection, MaxEntConfig):
    """[model] of the hashed maximum-entropy language model (maxent)."""

    ARCHITECTURE = MaxEntConfig
    data_parallel_only = True


@dataclass
class RecurrentSection(ModelSection, RecurrentConfig):
    """[model] of the recurrent language models (rnn, lstm, gru: fastlm.models.RecurrentLM)."""

    ARCHITECTURE = RecurrentConfig
    data_parallel_only = True
    carries_state = True


@dataclass
class VisionSection(ModelSection, VisionConfig):
    """[model] of the ViT family (vit: fastlm.models.VisionEncoder), trained by the image tasks
    (fastlm finetune image_classification); the text-and-image tasks take the same keys as task.vision."""

    ARCHITECTURE = VisionConfig
    data_parallel_only = True


# family -> its [model] section class, in the order errors list them
MODEL_SECTIONS: dict[str, type[ModelSection]] = {}


def register_model_section(section: type[ModelSection], *families: str) -> None:
    """Make `model.family = <each of families>` read its [model] section as `section`."""
    if not issubclass(section, ModelSection):
        raise TypeError(f"{section.__name__} must subclass ModelSection (for the run keys)")
    for family in families:
        if family in MODEL_SECTIONS:
            raise ValueError(f"model family {family!r} is registered already ({MODEL_SECTIONS[family].__name__})")
        MODEL_SECTIONS[family] = section


register_model_section(GPTSection, *FAMILIES)
register_model_section(EncoderSection, *ENCODER_FAMILIES)
register_model_section(MaxEntSection, "maxent")
register_model_section(NGramSection, "ngram")
register_model_section(HMMSection, "hmm")
register_model_section(RecurrentSection, "rnn", "lstm", "gru")
register_model_section(VisionSection, "vit")
