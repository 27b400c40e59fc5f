"""Model registry: name -> Linen module class taking (config, num_items)."""

from jaxrec.models.bert4rec import BERT4Rec
from jaxrec.models.pinnerformer import PinnerFormer
from jaxrec.models.sasrec import SASRec, vocab_rows

MODELS = {"sasrec": SASRec, "bert4rec": BERT4Rec, "pinnerformer": PinnerFormer}


def build_model(config, num_items: int):
    try:
        cls = MODELS[config.name]
    except KeyError:
        raise ValueError(f"unknown model {config.name!r}; known: {', '.join(MODELS)}") from None
    return cls(config=config, num_items=num_items)


__all__ = ["MODELS", "BERT4Rec", "PinnerFormer", "SASRec", "build_model", "vocab_rows"]
