"""The PyTorch peer: pmixer/SASRec.pytorch's model and training step, timed on the same data.

Not part of the package (torch is not a jaxrec dependency). train_throughput.py runs it with
`--torch-python PATH` (a Python that has torch) so both are measured in one run on one machine.
The model follows pmixer/SASRec.pytorch (the widely used port): nn.MultiheadAttention with
attention dropout, Conv1d point-wise feed-forward, LayerNorm eps 1e-8, positions 1..L with 0
at padding, BCEWithLogits on positive and one negative at non-padding positions, Adam(0.9, 0.98).
Batches are built like its WarpSampler (random users, left padded to max_len); host time is
excluded, as its sampler runs in other processes. Prints one JSON line per figure.

  python benchmarks/torch_peer_sasrec.py --data ../shared/data/sasrec-format/ml-1m.txt
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


class PointWiseFeedForward(torch.nn.Module):
    def __init__(self, hidden, dropout):
        super().__init__()
        self.conv1 = torch.nn.Conv1d(hidden, hidden, kernel_size=1)
        self.dropout1 = torch.nn.Dropout(p=dropout)
        self.conv2 = torch.nn.Conv1d(hidden, hidden, kernel_size=1)
        self.dropout2 = torch.nn.Dropout(p=dropout)

    def forward(self, inputs):
        outputs = self.dropout2(self.conv2(torch.relu(self.dropout1(self.conv1(inputs.transpose(-1, -2))))))
        return outputs.transpose(-1, -2) + inputs


class TorchSASRec(torch.nn.Module):
    def __init__(self, num_items, max_len, hidden, num_blocks, num_heads, dropout):
        super().__init__()
        self.item_emb = torch.nn.Embedding(num_items + 1, hidden, padding_idx=0)
        self.pos_emb = torch.nn.Embedding(max_len + 1, hidden, padding_idx=0)
        self.emb_dropout = torch.nn.Dropout(p=dropout)
        self.attention_norms = torch.nn.ModuleList([torch.nn.LayerNorm(hidden, eps=1e-8) for _ in range(num_blocks)])
        self.attentions = torch.nn.ModuleList(
            [torch.nn.MultiheadAttention(hidden, num_heads, dropout) for _ in range(num_blocks)]
        )
        self.ffn_norms = torch.nn.ModuleList([torch.nn.LayerNorm(hidden, eps=1e-8) for _ in range(num_blocks)])
        self.ffns = torch.nn.ModuleList([PointWiseFeedForward(hidden, dropout) for _ in range(num_blocks)])
        self.last_norm = torch.nn.LayerNorm(hidden, eps=1e-8)

    def log2feats(self, seqs_np):
        seqs = self.item_emb(torch.from_numpy(seqs_np)) * self.item_emb.embedding_dim**0.5
        positions = np.tile(np.arange(1, seqs_np.shape[1] + 1), [seqs_np.shape[0], 1]) * (seqs_np != 0)
        seqs = self.emb_dropout(seqs + self.pos_emb(torch.from_numpy(positions)))
        length = seqs.shape[1]
        causal = ~torch.tril(torch.ones((length, length), dtype=torch.bool))
        for norm, attn, ffn_norm, ffn in zip(self.attention_norms, self.attentions, self.ffn_norms, self.ffns):
            seqs = seqs.transpose(0, 1)
            q = norm(seqs)
            out, _ = attn(q, seqs, seqs, attn_mask=causal)
            seqs = (q + out).transpose(0, 1)
            seqs = ffn(ffn_norm(seqs))
        return self.last_norm(seqs)

    def forward(self, seqs, pos, neg):
        feats = self.log2feats(seqs)
        pos_logits = (feats * self.item_emb(torch.from_numpy(pos))).sum(-1)
        neg_logits = (feats * self.item_emb(torch.from_numpy(neg))).sum(-1)
        return pos_logits, neg_logits


def read_sequences(path):
    pairs = np.loadtxt(path, dtype=np.int64)
    users = np.split(pairs[:, 1], np.flatnonzero(np.diff(pairs[:, 0])) + 1)
    return [u[:-2] for u in users], int(pairs[:, 1].max())


def sample_batch(rng, train, num_items, batch_size, max_len):
    """pmixer's WarpSampler: random users with >1 item, left padded, one negative per position."""
    seqs, pos, neg = (np.zeros((batch_size, max_len), np.int64) for _ in range(3))
    for row in range(batch_size):
        user = rng.integers(len(train))
        while len(train[user]) <= 1:
            user = rng.integers(len(train))
        items = train[user]
        history = set(items.tolist())
        tail_in, tail_out = items[:-1][-max_len:], items[1:][-max_len:]
        seqs[row, max_len - len(tail_in) :] = tail_in
        pos[row, max_len - len(tail_out) :] = tail_out
        for col in range(max_len - len(tail_out), max_len):
            item = rng.integers(1, num_items + 1)
            while item in history:
                item = rng.integers(1, num_items + 1)
            neg[row, col] = item
    return seqs, pos, neg


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True, help="SASRec-format ml-1m.txt")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-len", type=int, default=200)
    parser.add_argument("--hidden", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    train, num_items = read_sequences(args.data)
    model = TorchSASRec(num_items, args.max_len, args.hidden, 2, 1, 0.2)
    for _, param in model.named_parameters():
        try:
            torch.nn.init.xavier_normal_(param.data)
        except ValueError:
            pass
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98))
    bce = torch.nn.BCEWithLogitsLoss()
    rng = np.random.default_rng(0)
    batches = [
        sample_batch(rng, train, num_items, args.batch_size, args.max_len) for _ in range(args.steps + args.warmup)
    ]
    times = []
    for i, (seqs, pos, neg) in enumerate(batches):
        start = time.perf_counter()
        pos_logits, neg_logits = model(seqs, pos, neg)
        idx = np.where(pos != 0)
        optimizer.zero_grad()
        loss = bce(pos_logits[idx], torch.ones_like(pos_logits[idx]))
        loss = loss + bce(neg_logits[idx], torch.zeros_like(neg_logits[idx]))
        loss.backward()
        optimizer.step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    step = float(np.median(times))
    steps_per_epoch = len(train) // args.batch_size  # pmixer: num_batch = len(user_train) // batch_size
    common = {
        "torch": torch.__version__,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "max_len": args.max_len,
        "hidden": args.hidden,
    }
    for figure, value, unit in (
        ("peer/torch_step_ms", 1000 * step, "ms"),
        ("peer/torch_epoch_seconds", step * steps_per_epoch, "s"),
        ("peer/torch_sequences_per_s", args.batch_size / step, "seq/s"),
    ):
        print(
            json.dumps(
                {
                    "figure": figure,
                    "value": round(value, 4),
                    "unit": unit,
                    "min": round(1000 * min(times), 1),
                    "max": round(1000 * max(times), 1),
                    "steps_per_epoch": steps_per_epoch,
                    **common,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
