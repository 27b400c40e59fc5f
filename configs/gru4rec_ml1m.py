"""GRU4Rec on MovieLens-1M (SASRec's preprocessing), leave-one-out, full-catalogue softmax CE.

Hidasi et al. (ICLR 2016): one GRU layer; 100 units as in their reported runs; dropout on the
embeddings and the output. Their session-parallel mini-batches with TOP1/BPR losses become padded
user sequences trained with cross-entropy over the whole catalogue (the loss their later work and
most re-evaluations favour); Adam instead of Adagrad. Not tuned on this data.
"""

from jaxrec.config import Config, DataConfig, EvalConfig, TrainConfig
from jaxrec.models.gru4rec import GRU4RecConfig


def get_config() -> Config:
    return Config(
        data=DataConfig(name="ml-1m-sasrec"),
        model=GRU4RecConfig(max_len=200, hidden=100, num_blocks=1, dropout=0.25, loss="ce_chunked", ce_chunk=1024),
        train=TrainConfig(num_epochs=100, batch_size=128, learning_rate=1e-3),
        eval=EvalConfig(every_epochs=10, num_negatives=100),
    )
