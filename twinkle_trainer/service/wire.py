"""The tinker wire format: the SDK's protobuf messages (forward_backward requests; forward_backward and sample
results) read and written with the SDK's own generated classes, so the bytes are exactly what it sends and
expects. JSON bodies are parsed with the SDK's pydantic types in app.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tinker.proto import tinker_public_pb2 as pb

PROTO = "application/x-protobuf"

_DTYPES: dict[int, np.dtype] = {
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_INT64: np.dtype(np.int64),
    pb.DTYPE_INT32: np.dtype(np.int32),
}


class WireError(ValueError):
    """The request cannot be read, or asks for something this service does not do; the text says which."""


@dataclass
class Datum:
    tokens: np.ndarray  # int64, the model input
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # loss_fn_inputs, by name


@dataclass
class ForwardBackward:
    model_id: str
    seq_id: int
    loss_fn: str
    config: dict[str, float | str]
    forward_only: bool
    data: list[Datum]


def _tensor(msg: pb.Tensor, name: str) -> np.ndarray:
    dtype = _DTYPES.get(msg.dtype)
    if dtype is None:
        raise WireError(f"loss_fn_inputs[{name!r}]: unsupported dtype {msg.dtype}")
    if msg.HasField("sparse_csr"):
        shape = list(msg.shape)
        if len(shape) != 2:
            raise WireError(f"loss_fn_inputs[{name!r}]: a sparse tensor must be 2-D")
        values = np.frombuffer(msg.sparse_csr.values, dtype=dtype)
        crow = np.frombuffer(msg.sparse_csr.crow_indices, dtype=np.int64)
        col = np.frombuffer(msg.sparse_csr.col_indices, dtype=np.int64)
        dense = np.zeros(shape, dtype=dtype)
        for row in range(shape[0]):
            lo, hi = int(crow[row]), int(crow[row + 1])
            dense[row, col[lo:hi]] = values[lo:hi]
        return dense
    array = np.frombuffer(msg.dense, dtype=dtype)
    if msg.shape:
        try:
            array = array.reshape(list(msg.shape))
        except ValueError:
            raise WireError(f"loss_fn_inputs[{name!r}]: {array.size} values do not fit shape {list(msg.shape)}") from None
    return array.astype(np.int64) if dtype == np.int32 else array


def read_forward_backward(body: bytes) -> ForwardBackward:
    msg = pb.ForwardBackwardRequest()
    try:
        msg.ParseFromString(body)
    except Exception as exc:  # google.protobuf.message.DecodeError
        raise WireError(f"the forward_backward body is not a ForwardBackwardRequest message: {exc}") from None
    config: dict[str, float | str] = {}
    for key, value in msg.loss_fn_config.items():
        config[key] = float(value)
    for key, v2 in msg.loss_fn_config_v2.items():  # v2 wins where both are set
        config[key] = v2.text if v2.WhichOneof("value") == "text" else float(v2.number)
    data = []
    for i, d in enumerate(msg.data):
        if len(d.model_input_spans) or len(d.loss_fn_input_spans):
            raise WireError(f"datum {i}: provenance spans (stability info) are not supported by this service")
        parts = []
        for chunk in d.model_input:
            kind = chunk.WhichOneof("chunk")
            if kind != "encoded_text":
                raise WireError(f"datum {i}: {kind} inputs are not supported (text tokens only)")
            parts.append(np.frombuffer(chunk.encoded_text.tokens, dtype=np.int32))
        tokens = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        data.append(Datum(tokens, {name: _tensor(t, name) for name, t in d.loss_fn_inputs.items()}))
    return ForwardBackward(msg.model_id, int(msg.seq_id), msg.loss_fn, config, bool(msg.forward_only), data)


def _batched(arrays: list[np.ndarray], dtype: Any) -> pb.BatchedTensor:
    np_dtype = _DTYPES[dtype]
    flat = [np.ascontiguousarray(a, dtype=np_dtype).reshape(-1) for a in arrays]
    offsets = np.zeros(len(flat) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([a.nbytes for a in flat])
    trailing = list(arrays[0].shape[1:]) if arrays and arrays[0].ndim > 1 else []
    return pb.BatchedTensor(data=b"".join(a.tobytes() for a in flat), offsets=offsets.tobytes(), dtype=dtype,
                            trailing_shape=trailing)


def write_forward_backward(outputs: list[dict[str, np.ndarray]], metrics: dict[str, float]) -> bytes:
    """loss_fn_outputs (one dict of float32 arrays per datum) and metrics, as one ArrayRecord."""
    msg = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord", metrics=metrics)
    if outputs:
        record = msg.loss_fn_outputs.add()
        record.type_tag = "ArrayRecord"
        record.num_datums = len(outputs)
        for name in outputs[0]:
            record.fields[name].CopyFrom(_batched([o[name] for o in outputs], pb.DTYPE_FLOAT32))
    return bytes(msg.SerializeToString())


@dataclass
class Sequence:
    tokens: list[int]
    logprobs: list[float] | None
    stop: bool  # True: ended at a stop token or string; False: cut at max_tokens
    topk: tuple[np.ndarray, np.ndarray] | None = None  # (ids [n, k], logprobs [n, k])


def _topk(ids: np.ndarray, logprobs: np.ndarray) -> pb.TopkLogprobs:
    return pb.TopkLogprobs(token_ids=np.ascontiguousarray(ids, dtype=np.int32).tobytes(),
                           logprobs=np.ascontiguousarray(logprobs, dtype=np.float32).tobytes(),
                           k=int(ids.shape[1]), length=int(ids.shape[0]))


def write_sample(sequences: list[Sequence], prompt_logprobs: np.ndarray | None,
                 topk_prompt: tuple[np.ndarray, np.ndarray] | None) -> bytes:
    msg = pb.SampleResponse()
    for s in sequences:
        seq = msg.sequences.add()
        seq.stop_reason = pb.STOP_REASON_STOP if s.stop else pb.STOP_REASON_LENGTH
        seq.tokens = np.asarray(s.tokens, dtype=np.int32).tobytes()
        if s.logprobs is not None:
            seq.logprobs = np.asarray(s.logprobs, dtype=np.float32).tobytes()
        if s.topk is not None:
            seq.topk_sampled_logprobs.CopyFrom(_topk(*s.topk))
    if prompt_logprobs is not None:
        msg.prompt_logprobs = np.asarray(prompt_logprobs, dtype=np.float32).tobytes()
    if topk_prompt is not None:
        msg.topk_prompt_logprobs.CopyFrom(_topk(*topk_prompt))
    return bytes(msg.SerializeToString())
