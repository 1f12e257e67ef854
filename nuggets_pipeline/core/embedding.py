"""Sentence embeddings from a causal LM: last hidden states mean-pooled over real (unpadded) tokens."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from nuggets_pipeline.core.modeling import LoadedModel, encode

CPU_BATCH_TOKENS = 1024
CUDA_BATCH_TOKENS = 8192


@torch.inference_mode()
def embed_texts(
    loaded: LoadedModel,
    texts: Sequence[str],
    max_tokens: int = 512,
    batch_tokens: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """One L2-normalised vector per text. Texts are batched by length so padding stays small.

    ``max_tokens`` caps each text for embedding only (the cluster a long text belongs to is decided by its
    beginning); the cap never touches the stored example. ``batch_tokens`` (padded tokens per forward) defaults
    by device: small batches are faster on CPU (benchmarks/RESULTS.md), large ones fill a GPU.
    """
    if batch_tokens is None:
        batch_tokens = CUDA_BATCH_TOKENS if loaded.device.type == "cuda" else CPU_BATCH_TOKENS
    ids = [[loaded.bos_token_id, *encode(loaded.tokenizer, text)][:max_tokens] for text in texts]
    order = np.argsort([len(x) for x in ids], kind="stable")
    hidden_size = loaded.model.config.hidden_size
    result = np.zeros((len(texts), hidden_size), dtype=np.float32)
    pad = loaded.tokenizer.pad_token_id
    done = 0
    bar = tqdm(total=len(texts), desc="embedding", unit="text", leave=False)
    start = 0
    while start < len(order):
        # Grow the batch while its padded size stays under the token budget; sorted lengths keep padding low.
        end = start + 1
        while end < len(order) and len(ids[order[end]]) * (end - start + 1) <= batch_tokens:
            end += 1
        batch = [ids[i] for i in order[start:end]]
        width = max(len(x) for x in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, sequence in enumerate(batch):
            input_ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        input_ids, mask = input_ids.to(loaded.device), mask.to(loaded.device)
        hidden = loaded.model.model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).float()
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        result[order[start:end]] = pooled.cpu().numpy()
        done += end - start
        bar.update(end - start)
        if progress is not None:
            progress(done, len(texts))
        start = end
    bar.close()
    return result
