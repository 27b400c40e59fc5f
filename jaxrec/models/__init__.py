"""Model registry: name -> Linen module class taking (config, num_items)."""

from jaxrec.models.bert4rec import BERT4Rec
from jaxrec.models.gru4rec import GRU4Rec
from jaxrec.models.mf import MF
from jaxrec.models.pinnerformer import PinnerFormer
from jaxrec.models.rankers import BST, DIN, RANKERS, WDL, WDLSeq, build_ranker
from jaxrec.models.sasrec import SASRec, vocab_rows
from jaxrec.models.youtube_dnn import YoutubeDNN

MODELS = {
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
    "gru4rec": GRU4Rec,
    "mf": MF,
    "youtube_dnn": YoutubeDNN,
    "pinnerformer": PinnerFormer,
    **RANKERS,  # CTR rankers (wdl, wdl_seq, din, bst): built by build_ranker, trained by jaxrec.tasks.ctr.task
}


def build_model(config, num_items: int, num_users: int = 0):
    """The registry's module for `config.name`; `num_users` reaches only models with a user table (MF)."""
    try:
        cls = MODELS[config.name]
    except KeyError:
        raise ValueError(f"unknown model {config.name!r}; known: {', '.join(MODELS)}") from None
    takes_users = "num_users" in getattr(cls, "__dataclass_fields__", {})
    return cls(config=config, num_items=num_items, **({"num_users": num_users} if takes_users else {}))


def uses_user_inputs(model) -> bool:
    """Whether `model.encode` takes `user_BxF` (per-user inputs the pipeline then adds to every batch)."""
    return bool(getattr(model, "uses_user_inputs", False))


def trains_on_whole_sequence(model) -> bool:
    """Whether the model builds its own targets from the training items (TrainBatches' whole_sequence)."""
    return bool(getattr(model, "trains_on_whole_sequence", False))


__all__ = [
    "BST",
    "DIN",
    "MODELS",
    "RANKERS",
    "WDL",
    "WDLSeq",
    "build_ranker",
    "BERT4Rec",
    "GRU4Rec",
    "MF",
    "PinnerFormer",
    "SASRec",
    "YoutubeDNN",
    "build_model",
    "trains_on_whole_sequence",
    "uses_user_inputs",
    "vocab_rows",
]
