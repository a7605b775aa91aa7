"""Text generation with a registered model, on the worker: the run page's sample and the next
round's responses. One model is kept loaded at a time.
"""

from __future__ import annotations

_MODEL_CACHE: dict[str, tuple] = {}


def _load(path: str):
    """Load (and keep, one at a time) a model for generation."""
    from ..tiny_model import load_model_and_tokenizer

    if path not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        model, tokenizer = load_model_and_tokenizer(path)
        model.eval()
        _MODEL_CACHE[path] = (model, tokenizer)
    return _MODEL_CACHE[path]


def encode_prompts(model, tokenizer, prompts: list, max_new_tokens: int) -> list[list[int]]:
    """Token ids of each prompt (text as the trainer tokenizes it, or chat messages through the
    chat template), keeping the last tokens when a prompt and the answer would not fit."""
    max_positions = getattr(model.config, "max_position_embeddings", None) or 2048
    encoded = []
    for prompt in prompts:
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        encoded.append(list(ids)[-max(1, max_positions - max_new_tokens) :])
    return encoded


def generate_texts(
    model_path: str,
    prompts: list,
    num_return_sequences: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    seed: int = 0,
    *,
    batch_size: int = 32,
    progress=None,
) -> list[list[str]]:
    """Responses of the model at ``model_path`` to each prompt (a string, tokenized as the
    trainer tokenizes text prompts, or a list of chat messages, through the chat template):
    batched, with a KV cache (``training.worker.sampler``); greedy at temperature 0, else
    temperature, top-k 50 and top-p 0.95 sampling (``generate``'s defaults), seeded. A progress bar counts the answered rows;
    ``progress(done, total)`` is called after each batch too."""
    import torch
    from tqdm import tqdm

    from .sampler import sample_token_ids

    model, tokenizer = _load(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    encoded = encode_prompts(model, tokenizer, prompts, max_new_tokens)
    bar = tqdm(total=len(encoded) * num_return_sequences, desc="sampling", unit="response", leave=False,
               mininterval=1.0)

    def step(done: int, total: int) -> None:
        bar.update(done - bar.n)
        if progress is not None:
            progress(done, total)

    try:
        ids = sample_token_ids(
            model, encoded, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            max_new_tokens=max_new_tokens, num_return_sequences=num_return_sequences,
            temperature=temperature if temperature > 0 else (1.0 if num_return_sequences > 1 else 0.0),
            top_p=0.95, seed=seed, batch_size=batch_size, progress=step,
        )
    finally:
        bar.close()
    return [[tokenizer.decode(seq, skip_special_tokens=True) for seq in per_prompt] for per_prompt in ids]
