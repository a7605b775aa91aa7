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


def generate_texts(
    model_path: str,
    prompts: list,
    num_return_sequences: int = 1,
    max_new_tokens: int = 64,
    temperature: float = 0.8,
    seed: int = 0,
) -> list[list[str]]:
    """Responses of the model at ``model_path`` to each prompt (a string, tokenized as the
    trainer tokenizes text prompts, or a list of chat messages, through the chat template)."""
    import torch

    model, tokenizer = _load(model_path)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    torch.manual_seed(seed)
    out: list[list[str]] = []
    for prompt in prompts:
        if isinstance(prompt, list):
            ids = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        else:
            ids = tokenizer(prompt)["input_ids"]
        max_positions = getattr(model.config, "max_position_embeddings", None) or 2048
        ids = list(ids)[-max(1, max_positions - max_new_tokens) :]
        input_ids = torch.tensor([ids], device=device)
        sample = num_return_sequences > 1 or temperature > 0
        with torch.no_grad():
            generated = model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=max_new_tokens,
                min_new_tokens=1,
                do_sample=sample,
                temperature=temperature if sample else None,
                top_p=0.95 if sample else None,
                num_return_sequences=num_return_sequences,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        out.append([tokenizer.decode(g[len(ids) :], skip_special_tokens=True) for g in generated])
    return out
