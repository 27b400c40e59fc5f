"""YoutubeDNN candidate generation (Covington et al., RecSys 2016) on MovieLens-1M (SASRec's preprocessing).

As the paper: the user vector is a tower of ReLU layers (depth 3; the paper's tower narrows
1024 -> 512 -> 256 for 1M videos, here 256 -> 256 -> 64 for 3,416 items) over the average
embedding of the last 50 items before each position; extreme multiclass classification with
sampled negatives and logQ correction (`loss=sampled`): 1,024 uniform negatives per step (their Q is
constant, so the correction cancels), lr 3e-3 (an epoch is only 49 steps: at lr 1e-3 and 256
negatives the model was still at popularity's level after 15 epochs). `sampled_negatives=in_batch`
(candidates in proportion to their popularity in the batch, logQ-corrected) did not learn on ML-1M:
10 epochs left the loss at chance (5.64 against log 257 = 5.55) and valid NDCG@10 at 0.0004, where
uniform passes popularity within 2 epochs; not yet understood. A fixed number of examples per user
(the last 50 positions of each sequence) so that heavy users do not dominate.
Optional: `--set model.user_features=true` adds gender, age and occupation from ML-1M users.dat
(through SASRec's user id map). No "example age": this split has no timestamps. Not tuned.
"""

from jaxrec.config import Config, DataConfig, EvalConfig, TrainConfig
from jaxrec.models.youtube_dnn import YoutubeDNNConfig


def get_config() -> Config:
    return Config(
        data=DataConfig(name="ml-1m-sasrec"),
        model=YoutubeDNNConfig(
            max_len=100,  # >= examples_per_user + history_window - 1: every example's whole window
            hidden=64,
            dropout=0.1,
            history_window=50,
            tower_layers=3,
            tower_width=256,
            examples_per_user=50,
            loss="sampled",
            sampled_negatives="uniform",
            num_negatives=1024,
        ),
        train=TrainConfig(num_epochs=100, batch_size=128, learning_rate=3e-3),
        eval=EvalConfig(every_epochs=10, num_negatives=100),
    )
