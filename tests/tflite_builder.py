"""Build tiny, real TFLite models for tests (the shared folder has detectors, not classifiers).

`colour_classifier()` writes a float32 model: MEAN over the image -> FULLY_CONNECTED ->
SOFTMAX. With an identity-like weight matrix it answers "which colour channel dominates the
crop", so a test can compute the expected answer independently.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType

import flatbuffers
import numpy as np


def _schema(name: str) -> ModuleType:
    # The package re-exports classes under the module names: import the modules themselves.
    return importlib.import_module(f"tflite.{name}")


Buffer, BuiltinOperator, BuiltinOptions, FullyConnectedOptions, Model, Operator = (
    _schema(n)
    for n in (
        "Buffer",
        "BuiltinOperator",
        "BuiltinOptions",
        "FullyConnectedOptions",
        "Model",
        "Operator",
    )
)
OperatorCode, ReducerOptions, SoftmaxOptions, SubGraph, Tensor, TensorType = (
    _schema(n)
    for n in (
        "OperatorCode",
        "ReducerOptions",
        "SoftmaxOptions",
        "SubGraph",
        "Tensor",
        "TensorType",
    )
)


def _int_vector(b: flatbuffers.Builder, values: list[int]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependInt32(v)
    return b.EndVector()


def _bytes_vector(b: flatbuffers.Builder, data: bytes) -> int:
    b.StartVector(1, len(data), 16)
    for byte in reversed(data):
        b.PrependUint8(byte)
    return b.EndVector()


def _table_vector(b: flatbuffers.Builder, offsets: list[int]) -> int:
    b.StartVector(4, len(offsets), 4)
    for off in reversed(offsets):
        b.PrependUOffsetTRelative(off)
    return b.EndVector()


def _tensor(b: flatbuffers.Builder, name: str, shape: list[int], ttype: int, buffer: int) -> int:
    name_off = b.CreateString(name)
    shape_off = _int_vector(b, shape)
    Tensor.TensorStart(b)
    Tensor.TensorAddShape(b, shape_off)
    Tensor.TensorAddType(b, ttype)
    Tensor.TensorAddBuffer(b, buffer)
    Tensor.TensorAddName(b, name_off)
    return int(Tensor.TensorEnd(b))


def _operator(
    b: flatbuffers.Builder,
    opcode: int,
    inputs: list[int],
    outputs: list[int],
    options_type: int,
    options: int,
) -> int:
    ins, outs = _int_vector(b, inputs), _int_vector(b, outputs)
    Operator.OperatorStart(b)
    Operator.OperatorAddOpcodeIndex(b, opcode)
    Operator.OperatorAddInputs(b, ins)
    Operator.OperatorAddOutputs(b, outs)
    Operator.OperatorAddBuiltinOptionsType(b, options_type)
    Operator.OperatorAddBuiltinOptions(b, options)
    return int(Operator.OperatorEnd(b))


def _float_vector(b: flatbuffers.Builder, values: list[float]) -> int:
    b.StartVector(4, len(values), 4)
    for v in reversed(values):
        b.PrependFloat32(v)
    return b.EndVector()


def normalization_metadata(mean: list[float], std: list[float]) -> bytes:
    """A ModelMetadata flatbuffer ("M001") whose first input has NormalizationOptions.

    Field slots follow metadata_schema.fbs: NormalizationOptions{mean=0, std=1},
    ProcessUnit{options_type=0, options=1}, TensorMetadata.process_units=4,
    SubGraphMetadata.input_tensor_metadata=2, ModelMetadata.subgraph_metadata=3.
    """
    b = flatbuffers.Builder(256)
    mean_vec, std_vec = _float_vector(b, mean), _float_vector(b, std)
    b.StartObject(2)
    b.PrependUOffsetTRelativeSlot(0, mean_vec, 0)
    b.PrependUOffsetTRelativeSlot(1, std_vec, 0)
    norm = b.EndObject()
    b.StartObject(2)
    b.PrependUint8Slot(0, 1, 0)  # ProcessUnitOptions.NormalizationOptions
    b.PrependUOffsetTRelativeSlot(1, norm, 0)
    unit = b.EndObject()
    units = _table_vector(b, [unit])
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(4, units, 0)
    tensor = b.EndObject()
    inputs = _table_vector(b, [tensor])
    b.StartObject(7)
    b.PrependUOffsetTRelativeSlot(2, inputs, 0)
    subgraph = b.EndObject()
    subgraphs = _table_vector(b, [subgraph])
    b.StartObject(8)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    return bytes(b.Output())


def colour_classifier(
    path: Path, size: int = 16, weights: np.ndarray | None = None, metadata: bytes | None = None
) -> Path:
    """Write the model; classes follow the rows of `weights` (default: R, G, B x 20).
    `metadata` (a ModelMetadata flatbuffer) is attached as TFLITE_METADATA."""
    w = np.asarray(weights if weights is not None else np.eye(3) * 20.0, np.float32)
    k = w.shape[0]
    b = flatbuffers.Builder(1024)
    buffers_data = [
        b"",
        b"",
        np.array([1, 2], np.int32).tobytes(),
        w.tobytes(),
        np.zeros(k, np.float32).tobytes(),
    ]
    if metadata is not None:
        buffers_data.append(metadata)
    buffers = []
    for data in buffers_data:
        vec = _bytes_vector(b, data) if data else None
        Buffer.BufferStart(b)
        if vec is not None:
            Buffer.BufferAddData(b, vec)
        buffers.append(Buffer.BufferEnd(b))
    f32, i32 = TensorType.TensorType.FLOAT32, TensorType.TensorType.INT32
    tensors = [
        _tensor(b, "image", [1, size, size, 3], f32, 1),
        _tensor(b, "axes", [2], i32, 2),
        _tensor(b, "mean", [1, 3], f32, 0),
        _tensor(b, "weights", [k, 3], f32, 3),
        _tensor(b, "bias", [k], f32, 4),
        _tensor(b, "logits", [1, k], f32, 0),
        _tensor(b, "probabilities", [1, k], f32, 0),
    ]
    ReducerOptions.ReducerOptionsStart(b)
    ReducerOptions.ReducerOptionsAddKeepDims(b, False)
    reducer = ReducerOptions.ReducerOptionsEnd(b)
    FullyConnectedOptions.FullyConnectedOptionsStart(b)
    fc = FullyConnectedOptions.FullyConnectedOptionsEnd(b)
    SoftmaxOptions.SoftmaxOptionsStart(b)
    SoftmaxOptions.SoftmaxOptionsAddBeta(b, 1.0)
    softmax = SoftmaxOptions.SoftmaxOptionsEnd(b)
    opts = BuiltinOptions.BuiltinOptions
    ops = [
        _operator(b, 0, [0, 1], [2], opts.ReducerOptions, reducer),
        _operator(b, 1, [2, 3, 4], [5], opts.FullyConnectedOptions, fc),
        _operator(b, 2, [5], [6], opts.SoftmaxOptions, softmax),
    ]
    codes = []
    for code in (
        BuiltinOperator.BuiltinOperator.MEAN,
        BuiltinOperator.BuiltinOperator.FULLY_CONNECTED,
        BuiltinOperator.BuiltinOperator.SOFTMAX,
    ):
        OperatorCode.OperatorCodeStart(b)
        OperatorCode.OperatorCodeAddDeprecatedBuiltinCode(b, code)
        OperatorCode.OperatorCodeAddBuiltinCode(b, code)
        OperatorCode.OperatorCodeAddVersion(b, 1)
        codes.append(OperatorCode.OperatorCodeEnd(b))
    tensors_vec, ops_vec = _table_vector(b, tensors), _table_vector(b, ops)
    inputs_vec, outputs_vec = _int_vector(b, [0]), _int_vector(b, [6])
    SubGraph.SubGraphStart(b)
    SubGraph.SubGraphAddTensors(b, tensors_vec)
    SubGraph.SubGraphAddInputs(b, inputs_vec)
    SubGraph.SubGraphAddOutputs(b, outputs_vec)
    SubGraph.SubGraphAddOperators(b, ops_vec)
    subgraph = SubGraph.SubGraphEnd(b)
    subgraphs_vec, codes_vec = _table_vector(b, [subgraph]), _table_vector(b, codes)
    buffers_vec = _table_vector(b, buffers)
    metadata_vec = None
    if metadata is not None:
        name = b.CreateString("TFLITE_METADATA")
        Metadata = _schema("Metadata")
        Metadata.MetadataStart(b)
        Metadata.MetadataAddName(b, name)
        Metadata.MetadataAddBuffer(b, len(buffers_data) - 1)
        metadata_vec = _table_vector(b, [Metadata.MetadataEnd(b)])
    Model.ModelStart(b)
    Model.ModelAddVersion(b, 3)
    Model.ModelAddOperatorCodes(b, codes_vec)
    Model.ModelAddSubgraphs(b, subgraphs_vec)
    Model.ModelAddBuffers(b, buffers_vec)
    if metadata_vec is not None:
        Model.ModelAddMetadata(b, metadata_vec)
    b.Finish(Model.ModelEnd(b), file_identifier=b"TFL3")
    path.write_bytes(b.Output())
    return path
