"""Train a small BitNet b1.58 language model within a fixed CPU time budget.

Read it top to bottom: constants, data, model (its code is in model.py), optimiser, schedule,
loop, report. MAGNET's training-code contract:
  MAGNET_TRAIN_DATA   the corpus's training split (bitnet.data.train_dir): all it can see
  MAGNET_CORPUS       the corpus's name, recorded in the checkpoint
  MAGNET_TOKENIZER    for a TOKENIZER other than "bytes": the folder MAGNET trained it into
                      (bitnet.tokenizer): its files and the training split already encoded
  MAGNET_TIME_BUDGET  seconds of training (the loop stops itself when they are spent)
  MAGNET_STEPS        if set, train exactly this many steps instead, at the progress per step
                      in MAGNET_SCHEDULE if set (a schedule.json written here): a replay
  MAGNET_SEED         seed for initialisation and batch sampling
  MAGNET_OUTPUT_DIR   where the checkpoint (config.json + model.safetensors) and metrics.json go
  MAGNET_INIT_CHECKPOINT  if set, start from that checkpoint (a specialist of a common base):
                      its shapes win over the constants
  prints `METRIC name=value` lines (train_loss, steps, ...): progress, not the score.
The controller reads TOKENIZER below as written (a plain string, never by running this file) and
trains that tokenizer on the training split before the run's clock starts.
The score (val_bpb) is the evaluator's alone: the controller scores the saved checkpoint on
validation bytes this code never sees (bitnet.score, checking that no prediction depends on
later bytes), so all of the budget goes to training. The checkpoint must load as
`model.BitNetLM(config)` from its config.json (save_checkpoint writes both files, and the
tokenizer's).
"""

import json
import math
import os
import resource
import time
from pathlib import Path

import torch
from model import BitNetLM  # model.py, next to this file: the architecture

from bitnet.checkpoint import CheckpointError, descent, load_checkpoint, save_checkpoint
from bitnet.data import get_batch
from bitnet.model import BitNetConfig
from bitnet.presets import preset
from bitnet.training_data import TrainingDataError, check_base_tokenizer, training_split

# --- tunable constants ---
TOKENIZER = "bytes"  # "bytes": one token per byte; "bpe:N": a byte-level BPE of N entries
PRESET = None  # None: the shape below; or a named size, e.g. "genkidama-618m" (bitnet.presets)
N_LAYER = 4
N_EMBD = 96  # hidden size
N_HEAD = 4
N_KV_HEAD = 2  # fewer key/value heads than query heads = grouped-query attention
MLP_RATIO = 4  # intermediate size = MLP_RATIO * N_EMBD
SEQ_LEN = 128  # context length in tokens (bytes for the byte tokenizer)
BATCH_SIZE = 16
LEARNING_RATE = 4e-3  # peak; BitNet tolerates (and wants) higher rates than dense models
STAGE2_LR_RATIO = 0.4  # at half time the LR drops to this fraction of the peak...
WEIGHT_DECAY = 0.1  # ...and weight decay goes to zero (two-stage schedule of BitNet b1.58)
BETA1 = 0.9
BETA2 = 0.95
WARMUP_STEPS = 30
GRAD_CLIP = 1.0
# A tied lm_head (the embedding matrix) and a SiLU FFN gate: the pair llama.cpp's bitnet graph
# computes, so a GGUF export runs there as trained. Measured at equal steps (bench/ffn_act.py) it
# scores as relu2 + untied did; FFN_ACT = "relu2" (squared ReLU), tied, scored 0.09 bit/byte
# lower, but llama.cpp cannot run it.
TIE_EMBEDDINGS = True
FFN_ACT = "silu"
LOG_EVERY = 25

# --- a named size (bitnet.presets) replaces the shape and batch above ---
INTERMEDIATE_SIZE = MLP_RATIO * N_EMBD
if PRESET is not None:
    try:
        size = preset(PRESET)
    except ValueError as err:
        raise SystemExit(f"PRESET: {err}") from None
    N_LAYER, N_EMBD, N_HEAD, N_KV_HEAD = size.layers, size.hidden, size.heads, size.kv_heads
    INTERMEDIATE_SIZE, SEQ_LEN, BATCH_SIZE = size.ffn, size.context, size.batch_size
    TIE_EMBEDDINGS = size.tie

# --- the contract ---
TIME_BUDGET = float(os.environ.get("MAGNET_TIME_BUDGET", "60"))
FIXED_STEPS = int(os.environ["MAGNET_STEPS"]) if os.environ.get("MAGNET_STEPS") else None
SCHEDULE = os.environ.get("MAGNET_SCHEDULE")
RECORDED = json.loads(Path(SCHEDULE).read_text()) if SCHEDULE else []
SEED = int(os.environ.get("MAGNET_SEED", "1337"))
OUTPUT_DIR = Path(os.environ.get("MAGNET_OUTPUT_DIR", "out"))
INIT_CHECKPOINT = os.environ.get("MAGNET_INIT_CHECKPOINT")
CORPUS = os.environ.get("MAGNET_CORPUS", "unnamed")  # see bitnet.data
TRAIN_DATA = os.environ.get("MAGNET_TRAIN_DATA")
TOKENIZER_DIR = os.environ.get("MAGNET_TOKENIZER")

torch.manual_seed(SEED)
generator = torch.Generator().manual_seed(SEED)

# --- data: the training split as token ids of TOKENIZER (bitnet.training_data) ---
try:
    tokenizer, train_data = training_split(TOKENIZER, TRAIN_DATA, TOKENIZER_DIR, CORPUS)
except TrainingDataError as err:
    raise SystemExit(str(err)) from None

# --- model ---
if INIT_CHECKPOINT:  # a specialist: the base's weights, and so its shapes and context length
    try:
        model = load_checkpoint(INIT_CHECKPOINT, BitNetLM)
    except CheckpointError as err:
        raise SystemExit(f"MAGNET_INIT_CHECKPOINT cannot start this model: {err}") from None
    config, lineage = model.config, descent(INIT_CHECKPOINT)
    try:
        check_base_tokenizer(INIT_CHECKPOINT, tokenizer)
    except TrainingDataError as err:
        raise SystemExit(str(err)) from None
    SEQ_LEN = config.max_position_embeddings
    print(f"starting from {INIT_CHECKPOINT} (base {lineage[0][:12]})")
else:
    config = BitNetConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=N_EMBD,
        intermediate_size=INTERMEDIATE_SIZE,
        num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD,
        num_key_value_heads=N_KV_HEAD,
        max_position_embeddings=SEQ_LEN,
        tie_word_embeddings=TIE_EMBEDDINGS,
        hidden_act=FFN_ACT,
    )
    model, lineage = BitNetLM(config), []
n_params = model.num_parameters()
print(f"model: {n_params:,} parameters, {config.num_hidden_layers} layers x "
      f"{config.hidden_size} wide")

# --- optimiser: decay only the matrices, never norms or embeddings ---
matrices = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
others = [p for n, p in model.named_parameters() if p.dim() < 2 or "embed" in n]
optimizer = torch.optim.AdamW(
    [{"params": matrices, "decay": True}, {"params": others, "decay": False}],
    lr=LEARNING_RATE,
    betas=(BETA1, BETA2),
    weight_decay=0.0,
)


def schedule(step: int, progress: float) -> tuple[float, float]:
    """(learning rate, weight decay) at a step; progress runs from 0 to 1 over the budget.

    Warmup, then stage 1 (peak LR decaying to 3/4 of it, weight decay on) for the first half;
    stage 2 drops the LR to STAGE2_LR_RATIO of the peak, decays it linearly to zero and turns
    weight decay off.
    """
    if progress < 0.5:
        lr = LEARNING_RATE * (1.0 - 0.5 * progress)
        weight_decay = WEIGHT_DECAY
    else:
        lr = LEARNING_RATE * STAGE2_LR_RATIO * (1.0 - progress) / 0.5
        weight_decay = 0.0
    return lr * min(1.0, (step + 1) / WARMUP_STEPS), weight_decay


# --- training loop ---
model.train()
step, smoothed_loss = 0, None
schedule_trace = []  # progress at every step, for replays
train_start = time.perf_counter()
while True:
    elapsed = time.perf_counter() - train_start
    progress = (RECORDED[step] if step < len(RECORDED)  # a replay: as its recorded run did
                else step / FIXED_STEPS if FIXED_STEPS else elapsed / TIME_BUDGET)
    if progress >= 1.0:
        break
    schedule_trace.append(progress)
    lr, weight_decay = schedule(step, progress)
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay if group["decay"] else 0.0

    inputs, targets = get_batch(train_data, BATCH_SIZE, SEQ_LEN, generator)
    _, loss = model(inputs, targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    step += 1

    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise SystemExit(f"loss became {loss_value} at step {step}: lower LEARNING_RATE")
    smoothed_loss = loss_value if smoothed_loss is None else 0.9 * smoothed_loss + 0.1 * loss_value
    if step % LOG_EVERY == 0:
        print(f"step {step:5d} | loss {smoothed_loss:.4f} | lr {lr:.2e} | {elapsed:5.1f}s")
train_seconds = time.perf_counter() - train_start

# --- report: the checkpoint is what the evaluator scores ---
save_checkpoint(model, OUTPUT_DIR, lineage=lineage, corpus=CORPUS, tokenizer=tokenizer)
metrics = {
    "train_loss": round(smoothed_loss or float("nan"), 6),
    "steps": step,
    "train_seconds": round(train_seconds, 3),
    "tokens_per_s": round(step * BATCH_SIZE * SEQ_LEN / max(train_seconds, 1e-9), 1),
    "params": n_params,
    "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
}
(OUTPUT_DIR / "metrics.json").write_text(json.dumps(metrics, indent=2))
(OUTPUT_DIR / "schedule.json").write_text(json.dumps(schedule_trace))
for name, value in metrics.items():
    print(f"METRIC {name}={value}", flush=True)
os._exit(0)  # all saved: skip tearing torch down (0.7 s)
