"""A TRL DPO run with a ProbeMonitor: the README's "Monitor your own TRL run" example.

    python docs/examples/monitor_dpo.py --out runs/my-dpo                      # SmolLM2-135M-Instruct
    python docs/examples/monitor_dpo.py --model tiny-random --steps 40 --every 5 --lr 1e-3 --out DIR
    python docs/examples/monitor_dpo.py --report-to tensorboard --out runs/my-dpo   # then: tensorboard --logdir runs

Two processes: accelerate launch --multi_gpu --num_processes 2 docs/examples/monitor_dpo.py --out runs/my-dpo
"""
import argparse

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer

from learning_dynamics.validate.data import default_dataset
from learning_dynamics.validate.training import load_model
from learning_dynamics.validate.monitor import ProbeMonitor

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="smollm2", help="smollm2, tiny-random, a local HF folder or a .gguf file")
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--every", type=int, default=100, help="steps between probe evaluations")
parser.add_argument("--lr", type=float, default=5e-6)
parser.add_argument("--batch", type=int, default=8, help="pairs per step and process")
parser.add_argument("--report-to", default="none", help="the trainer's report_to: none, tensorboard, wandb, all")
parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
parser.add_argument("--out", default="runs/my-dpo")
args = parser.parse_args()

loaded = load_model(args.model)                       # or AutoModelForCausalLM / AutoTokenizer as usual
split = default_dataset(seed=0)                       # or your own rows, in any TRL format
pairs = [{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in split["test"] + split["train"]]

monitor = ProbeMonitor(pairs, every=args.every, out=args.out, overwrite=args.overwrite)
train = Dataset.from_list(monitor.train_rows)         # what `ldyn validate run --data` trains on: all but the held-out rows
gpu = torch.cuda.is_available()
trainer = DPOTrainer(model=loaded.model, processing_class=loaded.tokenizer, train_dataset=train,
                     args=DPOConfig(output_dir=args.out + "-trainer", max_steps=args.steps, learning_rate=args.lr,
                                    per_device_train_batch_size=args.batch, max_length=160, logging_steps=10,
                                    report_to=args.report_to, save_strategy="no", seed=0,
                                    bf16=gpu, use_cpu=not gpu))   # TRL defaults to bf16, which fails on a CPU
trainer.add_callback(monitor)                         # the one added line
trainer.train()
