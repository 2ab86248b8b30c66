"""The kinds of failure the monitor names, each with what usually fixes it.

A failed run's kind is read from its root cause as the log reader found it (the exception line and the lines after
it, every exception of its chain), case-insensitively, first match wins; then from the log's other fatal lines;
then from the signal that killed it; then from its exit code. The order puts the specific before the general: a
`size mismatch for ...` under `Error(s) in loading state_dict` is a checkpoint that does not fit the model, not a
shape bug; `No space left on device` for `/dev/shm` is shared memory, not the disk.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from twinkle_tui.runs.log_reader import LogReading


@dataclass(frozen=True)
class CrashKind:
    name: str
    pattern: re.Pattern[str]
    fixable: bool  # a code or configuration change in the script fixes it (a fix may be applied without asking)
    advice: str  # what usually fixes it, in one line


def _kind(name: str, pattern: str, advice: str, fixable: bool = False) -> CrashKind:
    return CrashKind(name, re.compile(pattern, re.IGNORECASE | re.MULTILINE), fixable, advice)


KINDS: list[CrashKind] = [
    _kind("out of shared memory", r"bus error|insufficient shared memory|out of shared memory|"
          r"unable to write to file </torch_|/dev/shm",
          "DataLoader workers pass batches through /dev/shm: give the container more (docker --shm-size=16g or "
          "--ipc=host) or lower num_workers"),
    _kind("vLLM engine limits", r"larger than the maximum number of tokens that can be stored in KV cache|"
          r"No available memory for the cache blocks|Insufficient memory for KV cache|max_model_len|"
          r"gpu_memory_utilization",
          "vLLM's KV cache cannot hold one sequence of max_model_len: lower max_model_len to what prompts plus "
          "completions need, or raise gpu_memory_utilization (or shard with tensor_parallel_size)"),
    _kind("NCCL timeout", r"Watchdog caught collective operation timeout|collective operation timeout|"
          r"WorkNCCL\(.*\) ran for \d+ milliseconds|DistStoreError.*timed out|Timed out after \d+ seconds waiting",
          "a rank stopped taking part in a collective (it died, hung, or ran a different number of steps): find "
          "the rank that stopped first; raise the timeout (ddp_timeout, init_process_group(timeout=)) only when "
          "one rank legitimately works alone for long, as in saving or evaluation"),
    _kind("device-side assert", r"device-side assert|Assertion `[^`]*` failed",
          "an index went out of range on the GPU, most often a label >= num_labels or a token id >= the "
          "vocabulary size (tokens added without resize_token_embeddings); rerun with CUDA_LAUNCH_BLOCKING=1 or "
          "on CPU to see the real line"),
    _kind("out of memory", r"OutOfMemoryError|out of memory|MemoryError|DefaultCPUAllocator: can't allocate|"
          r"CUBLAS_STATUS_ALLOC_FAILED|node running low on memory|killed due to memory pressure",
          "lower the micro batch size or the sequence length (keep the effective batch with gradient "
          "accumulation), turn on gradient checkpointing, or load the model in bf16/4-bit; "
          "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True helps with fragmentation", fixable=True),
    _kind("no usable GPU", r"no CUDA GPUs are available|Torch not compiled with CUDA|Found no NVIDIA driver|"
          r"NVIDIA driver on your system is too old|CUDA driver version is insufficient|requires a GPU|"
          r"CUDA is not available|no GPU found",
          "no GPU is visible to the run: check nvidia-smi and CUDA_VISIBLE_DEVICES, install a CUDA build of "
          "torch, or on a CPU-only machine turn off fp16/bf16 mixed precision"),
    _kind("NCCL error", r"NCCL error|nccl\w*Error|DistBackendError|ProcessGroupNCCL",
          "a collective failed: rerun with NCCL_DEBUG=INFO to see which call; common causes are a device or "
          "network the container cannot use (try NCCL_P2P_DISABLE=1 or NCCL_IB_DISABLE=1), too little shared "
          "memory, or mismatched NCCL and driver versions"),
    _kind("CUDA error", r"CUDA error|CUBLAS_STATUS|cuDNN error|CUDNN_STATUS|illegal memory access|"
          r"no kernel image is available|cudaError",
          "a GPU kernel failed: rerun with CUDA_LAUNCH_BLOCKING=1 to find the call; 'no kernel image' means a "
          "build without this GPU's architecture; illegal memory accesses usually come from mismatched binary "
          "packages (torch, flash-attn, driver) or custom kernels"),
    _kind("damaged model file", r"HeaderTooLarge|Error while deserializing header|"
          r"invalid load key|UnpicklingError|PytorchStreamReader failed|failed finding central directory|"
          r"not a zip file|file might be corrupted|incomplete metadata|MetadataIncompleteBuffer|"
          r"EOFError: Ran out of input|Unable to load weights from pytorch checkpoint|"
          r"(?:checkpoint|weights|model|safetensors|pickle|gguf) file (?:is )?(?:corrupt|damaged|truncated)",
          "a weights or checkpoint file is damaged or incomplete (an interrupted download or save, or a Git LFS "
          "pointer in place of the file): delete it and download or save it again (huggingface-cli download "
          "--force-download), and compare its size with the source's"),
    _kind("checkpoint mismatch", r"Error\(s\) in loading state_dict|Missing key\(s\) in state_dict|"
          r"Unexpected key\(s\) in state_dict|size mismatch for \S+: copying a param",
          "the checkpoint was saved from another model or configuration (base model, LoRA rank or target "
          "modules, vocabulary size after added tokens): load it with the same settings, or resize the "
          "embeddings before loading"),
    _kind("checkpoint not found", r"Can't find a valid checkpoint|No valid checkpoint found|"
          r"checkpoint\S* (?:not found|does not exist)|no checkpoint (?:to resume|found)",
          "the checkpoint to resume from is missing or incomplete (an interrupted save, or only an adapter was "
          "saved): point at an existing checkpoint-N folder, or start without resuming"),
    _kind("model not found or hub access", r"couldn't connect to 'https://huggingface\.co'|LocalEntryNotFoundError|"
          r"RepositoryNotFoundError|Repository Not Found|GatedRepoError|gated repo|401 Client Error|"
          r"is not a valid model identifier|does not appear to have a file named|HFValidationError|"
          r"Can't load (?:the )?(?:model|config|tokenizer) for",
          "the model id or path cannot be loaded: check its spelling or the local folder, log in "
          "(huggingface-cli login) for gated models, or download it once and point to the local copy "
          "(HF_HUB_OFFLINE=1 where there is no network)"),
    _kind("tokenizer or chat template", r"chat_template is not set|Cannot use chat template|"
          r"tokenizer does not have a padding token|Asking to pad but the tokenizer|pad_token|sentencepiece",
          "the tokenizer lacks what the script uses: set tokenizer.pad_token = tokenizer.eos_token (or add a pad "
          "token), and use an Instruct model or pass a chat_template for chat-formatted data", fixable=True),
    _kind("version mismatch", r"undefined symbol|requires [\w.-]+ ?[<>=]=|version \S+ is (?:required|not supported)|"
          r"(?:not |in)compatible with|unexpected keyword argument|was (?:compiled|built) (?:against|with)|"
          r"please (?:upgrade|update)|is required for a normal functioning|but found [\w.-]+==|"
          r"numpy\.dtype size changed|compiled using NumPy 1\.x|_ARRAY_API not found",
          "installed packages do not match what the code expects: compare with the versions it was written for "
          "(pip list), reinstall binary packages (flash-attn, bitsandbytes, vllm) against the installed torch, "
          "or use the names the library has now (evaluation_strategy became eval_strategy)"),
    _kind("import error", r"\b(?:ModuleNotFoundError|ImportError)\b|Failed to import|No module named|"
          r"cannot import name",
          "a package is missing or lacks that name: pip install it into the environment the run uses (the same "
          "python as its launcher), or align its version", fixable=True),
    _kind("syntax error", r"^(?:SyntaxError|IndentationError|TabError)\b",
          "the script does not compile: fix the line the error points at", fixable=True),
    _kind("out of disk space", r"No space left on device|Errno 28|Disk quota exceeded|Errno 122|StorageFull|"
          r"not enough (?:free )?disk space",
          "free space where checkpoints and caches go (df -h on output_dir, HF_HOME, /tmp), keep fewer "
          "checkpoints (save_total_limit), or save to a larger disk"),
    _kind("I/O error", r"Errno 5\]|Input/output error|Stale file handle|Transport endpoint is not connected|"
          r"Read-only file system",
          "the storage failed under the run (a network filesystem or a failing disk): check dmesg and the "
          "mount, copy the data to a local disk, and rerun"),
    _kind("permission denied", r"PermissionError|Permission denied|Errno 13\]|Operation not permitted",
          "the run cannot read or write a path: point output_dir and the caches (HF_HOME, TRITON_CACHE_DIR) at "
          "a folder you own, or fix its permissions"),
    _kind("device or dtype mismatch", r"expected scalar type|found dtype \w+ but expected|Expected all tensors to "
          r"be on the same device|Input type \(.*\) and (?:weight|bias) type|must have the same dtype|"
          r"not implemented for '(?:Half|BFloat16)'|expected .* to have the same dtype|"
          r"Attempting to unscale FP16 gradients|Expected object of scalar type|"
          r"(?:Half|Float|BFloat16|Double) (?:but|and) (?:found|got) (?:Half|Float|BFloat16|Double)|"
          r"Expected (?:a )?(?:cuda|cpu) (?:tensor|device)|on (?:different|two) devices",
          "tensors disagree on dtype or device: move the batch to the model's device, keep one precision "
          "(autocast, or bf16 throughout) instead of mixing a half model with float32 inputs"),
    _kind("port in use", r"Address already in use|EADDRINUSE|errno: 98|address is already in use|"
          r"port \d+ is (?:already )?in use|failed to bind to|failed to listen on any local network address",
          "another process holds the port (often a run of yours that has not exited): pick a free one "
          "(torchrun --master_port, MASTER_PORT, or the server's --port), or end the process that holds it "
          "(ss -ltnp | grep PORT)"),
    _kind("configuration error", r"Check batch related parameters|train_batch_size is not equal|DeepSpeed|"
          r"ds_config|zero_optimization|accelerate config|AcceleratorState|fsdp|unrecognized arguments|"
          r"error: argument|the following arguments are required|requires the save and eval strategy|"
          r"must be (?:evenly )?divisible|TrainingArguments|GRPOConfig|SFTConfig|invalid choice",
          "the launcher's or trainer's settings contradict each other: make train_batch_size = micro batch x "
          "gradient accumulation x world size (or leave them 'auto' with DeepSpeed), and check the arguments "
          "the error names"),
    _kind("shape mismatch", r"size mismatch|shape mismatch|mat1 and mat2 shapes|must match the size|"
          r"Expected .* size|expected input\[|dimension|shape '\[.*\]' is invalid",
          "tensor shapes disagree: print the shapes at the line it names (batch layout, sequence length, "
          "the model's expected input)"),
    _kind("name/attribute error", r"^(?:NameError|AttributeError|UnboundLocalError)\b",
          "a name or attribute the code uses does not exist: fix the spelling, or the object is not what the "
          "code expects (often None)", fixable=True),
    _kind("missing file or key", r"^(?:FileNotFoundError|KeyError|IsADirectoryError)\b|No such file|Errno 2\]",
          "a path or a key the script reads is not there: check the path (relative to the run's working "
          "directory) or the column names of the data", fixable=True),
]

SIGNAL_KINDS: dict[str, tuple[str, str, str]] = {  # signal -> (kind, what it usually means, what usually fixes it)
    "SIGKILL": ("killed by SIGKILL", "most likely the kernel's OOM killer (host memory, not GPU memory)",
                "check with dmesg -T | grep -i -E 'killed process|out of memory' (or journalctl -k); lower the "
                "DataLoader workers, the batch size or sequence length, load the model with low_cpu_mem_usage or "
                "in lower precision, or add RAM or swap"),
    "SIGSEGV": ("segmentation fault", "a native library crashed, not the Python code",
                "usually mismatched binary packages (torch, CUDA, flash-attn, bitsandbytes) or a DataLoader "
                "worker: rerun with PYTHONFAULTHANDLER=1 to see the Python stack, and reinstall the binary "
                "packages against the installed torch"),
    "SIGABRT": ("aborted", "a native library aborted (a C++ exception or a failed assertion)",
                "the lines before the abort name the library; rerun with PYTHONFAULTHANDLER=1 for the Python "
                "stack"),
    "SIGBUS": ("out of shared memory", "a bus error, usually /dev/shm running out under DataLoader workers",
               KINDS[0].advice),
    "SIGTERM": ("killed by SIGTERM", "stopped from outside: a scheduler's time limit, a kill, or a container stop",
                "check the scheduler's limits and save checkpoints more often so a stop loses less"),
}
INTERRUPTED = "interrupted"
OTHER = "other"
EXIT_CODE = "exit code"

_ADVICE = {k.name: k.advice for k in KINDS} | {kind: fix for kind, _, fix in SIGNAL_KINDS.values()}
_FIXABLE = {k.name for k in KINDS if k.fixable}


@dataclass(frozen=True)
class Diagnosis:
    """A failed launch's kind, what it usually means, what usually fixes it, and whether a fix to the script
    may be applied without asking."""

    kind: str
    advice: str
    fixable: bool = False
    meaning: str = ""  # for a signal: what it usually means


def classify_text(text: str) -> CrashKind | None:
    """The first kind whose pattern is in this text (an exception line and the lines after it)."""
    for kind in KINDS:
        if kind.pattern.search(text):
            return kind
    return None


def classify_crash(exception: str, traceback: str = "") -> tuple[str, bool]:
    """Kind and fixability of an exception line (with its traceback as further text)."""
    found = classify_text(exception) or classify_text(traceback)
    return (found.name, found.fixable) if found else (OTHER, False)


def diagnose(reading: LogReading) -> Diagnosis:
    """Why a launch failed, from what its log says: the root cause's kind, else one of the log's fatal lines, else
    the signal that killed it, else its exit code."""
    if reading.interrupted:
        return Diagnosis(INTERRUPTED, "the run was interrupted (Ctrl-C): resume it from its last checkpoint")
    own = reading.own_signal
    if own == "SIGKILL":  # nothing prints its own SIGKILL: the log's tracebacks are not why it died
        kind, meaning, fix = SIGNAL_KINDS["SIGKILL"]
        return Diagnosis(kind, fix, meaning=meaning)
    for text in (reading.classify_text(), *reading.fatal_lines):
        found = classify_text(text) if text else None
        if found is not None:
            return Diagnosis(found.name, found.advice, found.fixable)
    if reading.signal:
        kind, meaning, fix = SIGNAL_KINDS.get(reading.signal, (f"killed by {reading.signal}", "", ""))
        return Diagnosis(kind, fix or "the lines before it are the evidence", meaning=meaning)
    if reading.root is not None or reading.fatal_line:
        return Diagnosis(OTHER, "read the exception and the frame it was raised in")
    return Diagnosis(EXIT_CODE, "it printed no traceback: the last lines it printed are the evidence")


def advice_for(kind: str) -> str:
    return _ADVICE.get(kind, "")


def is_fixable(kind: str) -> bool:
    return kind in _FIXABLE
