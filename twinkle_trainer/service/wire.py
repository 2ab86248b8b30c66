"""The tinker wire format: the SDK's protobuf messages (forward_backward requests; forward_backward and sample
results) read and written with the SDK's own generated classes, so the bytes are exactly what it sends and
expects. JSON bodies are parsed with the SDK's pydantic types in app.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from tinker.proto import tinker_public_pb2 as pb

from twinkle_trainer.service.errors import EngineError

PROTO = "application/x-protobuf"

_DTYPES: dict[int, np.dtype] = {
    pb.DTYPE_FLOAT32: np.dtype(np.float32),
    pb.DTYPE_INT64: np.dtype(np.int64),
    pb.DTYPE_INT32: np.dtype(np.int32),
}


class WireError(EngineError):
    """The request cannot be read, or asks for something this service does not do; the text says which."""


@dataclass(frozen=True)
class Span:
    """A run of a datum's positions and where its tokens came from: a sample's prompt or its sampled tokens."""

    sampled: bool
    sequence_id: str
    offset: int
    length: int


@dataclass
class Datum:
    tokens: np.ndarray  # int64, the model input
    inputs: dict[str, np.ndarray] = field(default_factory=dict)  # loss_fn_inputs, by name
    input_spans: list[Span] | None = None  # provenance of the model input's positions
    target_spans: list[Span] | None = None  # provenance of target_tokens' positions


def _spans(items: Any, what: str, expected: int, i: int) -> list[Span]:
    out = []
    for item in items:
        kind = item.WhichOneof("span")
        span = item.sampled_tokens if kind == "sampled_tokens" else item.prompt_tokens
        if kind is None or not span.sequence_id or span.offset < 0 or span.length < 0:
            raise WireError(f"datum {i}: a provenance span of {what} has no sequence_id or a negative size")
        out.append(Span(kind == "sampled_tokens", span.sequence_id, int(span.offset), int(span.length)))
    if sum(s.length for s in out) != expected:
        raise WireError(f"datum {i}: the provenance spans of {what} cover {sum(s.length for s in out)} positions; "
                        f"it has {expected}")
    return out


@dataclass
class ForwardBackward:
    model_id: str
    seq_id: int
    loss_fn: str
    config: dict[str, float | str]
    forward_only: bool
    data: list[Datum]


MAX_ELEMENTS = 1 << 24  # values in one loss_fn_inputs tensor (a datum has one per token; 16M is far beyond that)


def _tensor(msg: pb.Tensor, name: str, tokens: int) -> np.ndarray:
    """One loss_fn_inputs tensor, dense. Every size is checked against the declared shape and the datum's token
    count before anything is allocated; a sparse (CSR) tensor is checked whole, then scattered in one step."""
    dtype = _DTYPES.get(msg.dtype)
    if dtype is None:
        raise WireError(f"loss_fn_inputs[{name!r}]: unsupported dtype {msg.dtype}")
    shape = [int(d) for d in msg.shape]
    if any(d < 0 for d in shape) or int(np.prod(shape, dtype=np.float64)) > max(MAX_ELEMENTS, tokens):
        raise WireError(f"loss_fn_inputs[{name!r}]: shape {shape} is too large (a datum has {tokens} tokens)")
    if msg.HasField("sparse_csr"):
        if len(shape) != 2:
            raise WireError(f"loss_fn_inputs[{name!r}]: a sparse tensor must be 2-D")
        rows, cols = shape
        csr = msg.sparse_csr
        if len(csr.values) % dtype.itemsize or len(csr.crow_indices) % 8 or len(csr.col_indices) % 8:
            raise WireError(f"loss_fn_inputs[{name!r}]: a sparse tensor's buffers are not whole numbers")
        values = np.frombuffer(csr.values, dtype=dtype)
        crow = np.frombuffer(csr.crow_indices, dtype=np.int64)
        col = np.frombuffer(csr.col_indices, dtype=np.int64)
        if len(crow) != rows + 1 or crow[0] != 0 or np.any(np.diff(crow) < 0) or crow[-1] != len(col) \
                or len(col) != len(values):
            raise WireError(f"loss_fn_inputs[{name!r}]: the sparse tensor's crow_indices do not fit its {rows} rows "
                            f"and {len(col)} values")
        if len(col) and (col.min() < 0 or col.max() >= cols):
            raise WireError(f"loss_fn_inputs[{name!r}]: a sparse column index is outside 0 to {cols - 1}")
        dense = np.zeros(shape, dtype=dtype)
        dense[np.repeat(np.arange(rows), np.diff(crow)), col] = values
        return dense.astype(np.int64) if dtype == np.int32 else dense
    if len(msg.dense) % dtype.itemsize:
        raise WireError(f"loss_fn_inputs[{name!r}]: {len(msg.dense)} bytes are not whole {dtype} values")
    array = np.frombuffer(msg.dense, dtype=dtype)
    if shape:
        try:
            array = array.reshape(shape)
        except ValueError:
            raise WireError(f"loss_fn_inputs[{name!r}]: {array.size} values do not fit shape {shape}") from None
    return array.astype(np.int64) if dtype == np.int32 else array


def salvage_ids(body: bytes) -> tuple[str | None, int | None]:
    """The model_id and seq_id of a ForwardBackwardRequest that cannot be read whole (from its leading fields, as
    far as they are intact), so that its refusal still uses up its seq_id."""
    model_id: str | None = None
    seq_id: int | None = None
    i = 0

    def varint() -> int:
        nonlocal i
        value, shift = 0, 0
        while i < len(body) and shift < 64:
            byte = body[i]
            i += 1
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                return value
            shift += 7
        raise ValueError("truncated")

    try:
        while i < len(body) and (model_id is None or seq_id is None):
            tag = varint()
            field, kind = tag >> 3, tag & 7
            if kind == 0:
                value = varint()
                if field == 2:
                    seq_id = value
            elif kind == 2:
                size = varint()
                if field == 1 and i + size <= len(body):
                    model_id = body[i : i + size].decode("utf-8")
                i += size
            elif kind == 1:
                i += 8
            elif kind == 5:
                i += 4
            else:
                break
    except (ValueError, UnicodeDecodeError):
        pass
    return model_id, seq_id


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
        parts = []
        for chunk in d.model_input:
            kind = chunk.WhichOneof("chunk")
            if kind != "encoded_text":
                raise WireError(f"datum {i}: {kind} inputs are not supported (text tokens only)")
            parts.append(np.frombuffer(chunk.encoded_text.tokens, dtype=np.int32))
        tokens = np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)
        datum = Datum(tokens, {name: _tensor(t, name, len(tokens)) for name, t in d.loss_fn_inputs.items()})
        if len(d.model_input_spans) or len(d.loss_fn_input_spans):
            datum.input_spans = _spans(d.model_input_spans, "the model input", len(tokens), i)
            target = datum.inputs.get("target_tokens")
            datum.target_spans = _spans(d.loss_fn_input_spans, "target_tokens",
                                        len(target) if target is not None else len(tokens), i)
        data.append(datum)
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
