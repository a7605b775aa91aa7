"""SFT and (weighted, soft-label) DPO on any local causal-LM folder: the torch side of training.

The public surface::

    from training.config import TrainConfig
    from training.trainer.loop import train
    from training.trainer.state import Callbacks  # or any object with some of its methods
    result = train(TrainConfig(recipe="sft+dpo", max_steps=100), "var/models/default", pairs,
                   "var/runs/42", callbacks=my_callbacks)

``pairs`` are the calibrated export's rows ``{"prompt", "chosen", "rejected", "weight"?, "p_chosen"?}``.
``train`` validates everything it can before any compute (too few pairs, a model folder that
does not load, rows that cannot be tokenized, CUDA asked for but absent; pairs longer than
``max_length`` are truncated, ``training.data.prompt_keep``), then runs the recipe's phases
(``training.config.RECIPE_PHASES``):

* ``sft``: next-token loss on the chosen responses (response tokens only);
* ``dpo``: a DPO-family loss from ``training.losses`` against a frozen reference;
* ``sft+dpo``: SFT, save ``out_dir/sft``, then DPO from it with the SFT model as reference.

The modules, in the order a step meets them:

====================  ==========================================================================
``loop.py``           ``train`` (recipe -> phases, data, plans) and one phase's optimizer loop
``phases.py``         what each phase does per step: its loss, its logged stats, its evaluation;
                      a new phase (a reward model, PPO) is one more ``Phase`` there
``plan.py``           seeds, the data order of every step, the LR schedule, the held-out split
``device.py``         precision, the accelerator, the batch layout, loading the model
``logps.py``          response log-probabilities (backbone once, LM head on response positions)
``reference.py``      reference log-probs, computed once before DPO and cached on disk
``checkpoints.py``    everything written to ``out_dir``: checkpoints and resume, phase outputs
``state.py``          the callbacks ``train`` reports to, the run's shared state, the result
``cli.py``            the command line (``python -m training.trainer``, ``accelerate launch``)
====================  ==========================================================================

Layout of ``out_dir`` (everything the Django side needs to show and resume a run)::

    config.json            the TrainConfig and inputs of this run
    metrics.jsonl          one JSON object per optimizer step (what ``on_step`` received)
    checkpoints/<phase>/step-000050/   accelerate state (model, optimizer, RNG), scheduler,
                           trainer_state.json (step, phase, data-order seed); the last
                           ``keep_checkpoints`` are kept
    cache/ref_logps-*.pt   precomputed reference log-probs, keyed by data + model hash
    sft/                   (sft+dpo) the SFT model, save_pretrained, the DPO phase starts here
    final/                 the trained model + tokenizer (save_pretrained; LoRA merged into it)
    adapter/               (LoRA only) the last phase's PEFT adapter alone, on top of its base
    result.json            status, steps, final and eval metrics, paths (written last)

Calling ``train`` again with the same ``out_dir`` resumes from the last checkpoint, with the same
data order (the order of epoch ``e`` is a pure function of ``seed`` and ``e``), and ends at the same
step count; a finished ``out_dir`` just returns its result.

Efficiency: each pair is one ``[prompt | chosen | rejected]`` unit (``training.data``), so the
prompt is computed once and chosen and rejected go through one forward; on a GPU the units are
packed into as few rows as possible, padded to the batch's longest; on a CPU each unit runs at its
own length with no padding at all (``pack`` / ``unpadded``); only the response positions' hidden
states are projected through the LM head (in chunks that are recomputed on backward when large),
so full ``(batch, length, vocab)`` logits never exist; reference log-probs are computed once
before training (``reference.py``, cached on disk) so no reference model is kept or run
during training; AdamW uses the fused kernel.
Multi-GPU: ``accelerate launch --config_file training/accelerate_configs/ddp.yaml ...`` (see that
folder); ``Accelerator`` does device placement, DDP/FSDP/DeepSpeed and bf16 autocast.

Nothing here imports Django: the Celery side (``training.worker``) calls ``train`` with callbacks.
"""
