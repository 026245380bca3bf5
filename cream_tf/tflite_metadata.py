"""LiteRT (TFLite) model metadata for image classifiers, written and read without tflite-support.

The standard metadata is a `TFLITE_METADATA` buffer in the model (a flatbuffer of
tflite-support's metadata_schema.fbs, file identifier "M001"), plus the files it names (here
labels.txt) packed as a zip appended to the model. Android's Task Library ImageClassifier and
the Java MetadataExtractor read it. tflite-support's own writer does not run beside TF 2.20:
its last release (0.4.4) requires protobuf<4 where TF 2.20 needs protobuf 7, and its native
version module needs the system libusb-1.0. So this module writes the same format with the
`flatbuffers` package and TF's TFLite model schema, and only the fields an image classifier
uses, all from schema version 1.0.0.

`mean` and `std` are the standard format's: per channel, in the units of the image's 8-bit
pixels (0-255): the model's input is (pixel - mean) / std. A quantized (int8) model carries
the same values as its float model; the normalized image is then quantized with the input's
scale and zero point (metadata_schema.fbs, NormalizationOptions). The Task Library's image
preprocessor normalizes only float32 inputs (uint8 ones take raw pixels; int8 is unimplemented
there) and takes RGB only, so of these models it runs a float32 RGB one.
"""

from __future__ import annotations

import io
import zipfile

import flatbuffers
import numpy as np
from flatbuffers import number_types
from flatbuffers.table import Table
from tensorflow.lite.python import schema_py_generated as schema

from cream_tf.folders import LABELS_FILE

METADATA_NAME = "TFLITE_METADATA"
FILE_IDENTIFIER = b"M001"
# The fields written here all exist in schema 1.0.0, so every metadata parser understands them.
MIN_PARSER_VERSION = "1.0.0"
COLOR_SPACES = {"RGB": (1, 3), "GRAYSCALE": (2, 1)}  # name: (ColorSpaceType value, channels)
_FEATURE, _IMAGE = 1, 2  # ContentProperties union members
_NORMALIZATION = 1  # ProcessUnitOptions union member
_TENSOR_AXIS_LABELS = 2  # AssociatedFileType


def _strings(builder: flatbuffers.Builder, values: dict) -> dict:
    return {slot: builder.CreateString(text) for slot, text in values.items() if text is not None}


def _floats(builder: flatbuffers.Builder, values) -> int:
    return builder.CreateNumpyVector(np.asarray(values, dtype="<f4"))


def _offsets(builder: flatbuffers.Builder, offsets: list) -> int:
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return builder.EndVector()


def _table(builder: flatbuffers.Builder, slots: int, refs: dict, bytes_: dict | None = None) -> int:
    """A table of `slots` fields (in metadata_schema.fbs order, a union counting two: its type,
    then its value): `refs` {slot: offset of a string, vector or table}, `bytes_` {slot: byte}."""
    builder.StartObject(slots)
    for slot, value in (bytes_ or {}).items():
        builder.PrependUint8Slot(slot, value, 0)
    for slot, ref in refs.items():
        builder.PrependUOffsetTRelativeSlot(slot, ref, 0)
    return builder.EndObject()


def _metadata_buffer(name, description, version, author, license_, input_, output) -> bytes:
    """A ModelMetadata flatbuffer with one subgraph of one image input and one class output."""
    b = flatbuffers.Builder(1024)
    color, mean, std, stats = input_
    units = stats_table = None
    if mean is not None:
        norm = _table(b, 2, {0: _floats(b, mean), 1: _floats(b, std)})
        units = _offsets(b, [_table(b, 2, {1: norm}, {0: _NORMALIZATION})])
    if stats is not None:
        stats_table = _table(b, 2, {0: _floats(b, stats[1]), 1: _floats(b, stats[0])})  # max, then min
    image = _table(b, 2, {}, {0: color})
    refs = _strings(b, {0: "image", 1: "Input image, normalized as process_units say."})
    refs[3] = _table(b, 3, {1: image}, {0: _IMAGE})
    refs.update({slot: ref for slot, ref in ((4, units), (5, stats_table)) if ref is not None})
    input_tensor = _table(b, 7, refs)

    out_description, labels = output
    refs = _strings(b, {0: "logits", 1: out_description})
    refs[3] = _table(b, 3, {1: _table(b, 0, {})}, {0: _FEATURE})
    if labels:
        label_file = _table(
            b, 5, _strings(b, {0: LABELS_FILE, 1: "One class name per line."}), {2: _TENSOR_AXIS_LABELS}
        )
        refs[6] = _offsets(b, [label_file])
    output_tensor = _table(b, 7, refs)

    subgraph = _table(b, 10, {2: _offsets(b, [input_tensor]), 3: _offsets(b, [output_tensor])})
    refs = _strings(b, {0: name, 1: description, 2: version, 4: author, 5: license_, 7: MIN_PARSER_VERSION})
    refs[3] = _offsets(b, [subgraph])
    b.Finish(_table(b, 8, refs), FILE_IDENTIFIER)
    return bytes(b.Output())


def _checked(model: schema.ModelT, mean, std, labels, color_space: str):
    """The ColorSpaceType, mean, std and input stats to write; errors name what does not fit the model."""
    graph = model.subgraphs[0] if len(model.subgraphs) == 1 else None
    if graph is None or len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ValueError("with_metadata describes a model of one subgraph with one input and one output.")
    image, logits = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    if color_space not in COLOR_SPACES:
        raise ValueError(f"Unknown color_space {color_space!r}; valid are {', '.join(COLOR_SPACES)}.")
    color, channels = COLOR_SPACES[color_space]
    shape = [int(d) for d in image.shape]
    if len(shape) != 4 or shape[-1] != channels:
        raise ValueError(f"color_space {color_space} needs an NHWC input of {channels} channels, not {shape}.")
    if (mean is None) != (std is None):
        raise ValueError("Give both mean and std, or neither.")
    stats = None
    if mean is not None:
        mean, std = [float(v) for v in mean], [float(v) for v in std]
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, channels):
                raise ValueError(
                    f"{name} {values} has {len(values)} values for an input of {channels} channels; "
                    f"give 1 or {channels}."
                )
        if min(std) <= 0:
            raise ValueError(f"std {std} must be positive.")
        if image.type == schema.TensorType.FLOAT32:  # the input's range for 0-255 pixels, as tflite-support writes
            stats = [(0 - m) / s for m, s in zip(mean, std)], [(255 - m) / s for m, s in zip(mean, std)]
    classes = int(logits.shape[-1])
    bad = [label for label in labels or [] if not str(label).strip() or "\n" in str(label)]
    if labels is not None and (len(labels) != classes or bad):
        raise ValueError(
            f"labels must be {classes} non-empty one-line names, one per output class; got "
            f"{len(labels)}" + (f", with bad names {bad}" if bad else "") + "."
        )
    description = f"Logits over {classes} classes (softmax gives probabilities)"
    if logits.type != schema.TensorType.FLOAT32:
        description += "; dequantize with the tensor's scale and zero point"
    return (color, mean, std, stats), description + "."


def with_metadata(
    model: bytes,
    *,
    name: str,
    description: str,
    version: str,
    mean: list[float] | None,
    std: list[float] | None,
    labels: list[str] | None = None,
    color_space: str = "RGB",
    author: str | None = None,
    license: str | None = None,
) -> bytes:
    """`model` (a .tflite file's bytes) with image classifier metadata in place of any it had.

    `mean` and `std`: per channel (or one value for all), in 8-bit pixel units (see the module
    docstring); None for both when the input's normalization is unknown. `labels`: one name per
    output class, packed as labels.txt. `color_space`: RGB or GRAYSCALE.
    """
    parsed = schema.ModelT.InitFromObj(schema.Model.GetRootAs(model, 0))
    if any(buffer.offset > 1 for buffer in parsed.buffers):
        raise ValueError("The model keeps its weights outside the flatbuffer (buffer offsets); that is not supported.")
    input_, out_description = _checked(parsed, mean, std, labels, color_space)
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(
        _metadata_buffer(name, description, version, author, license, input_, (out_description, labels)), np.uint8
    )
    parsed.metadata = parsed.metadata or []
    entry = next((e for e in parsed.metadata if e.name.decode() == METADATA_NAME), None)
    if entry is None:  # a new buffer and entry; else the old buffer is replaced
        entry = schema.MetadataT()
        entry.name, entry.buffer = METADATA_NAME, len(parsed.buffers)
        parsed.metadata.append(entry)
        parsed.buffers.append(buffer)
    parsed.buffers[entry.buffer] = buffer
    builder = flatbuffers.Builder(len(model) + 4096)
    builder.Finish(parsed.Pack(builder), b"TFL3")
    packed = io.BytesIO(bytes(builder.Output()))  # without any files packed before
    if labels:
        # As tflite-support's MetadataPopulator does: a zip (stored, not compressed) after the flatbuffer.
        packed.seek(0, io.SEEK_END)
        with zipfile.ZipFile(packed, "a") as archive:
            archive.writestr(LABELS_FILE, "".join(f"{label}\n" for label in labels))
    return packed.getvalue()


class _Reader:
    """Fields of one flatbuffer table by slot (metadata_schema.fbs order, unions counting two)."""

    def __init__(self, data: bytes, position: int):
        self.tab = Table(data, position)

    def _get(self, slot: int, read, absent=None):
        offset = self.tab.Offset(4 + 2 * slot)
        return read(offset) if offset else absent

    def string(self, slot: int) -> str | None:
        return self._get(slot, lambda offset: self.tab.String(offset + self.tab.Pos).decode())

    def byte(self, slot: int) -> int:
        return self._get(slot, lambda offset: self.tab.Get(number_types.Uint8Flags, offset + self.tab.Pos), 0)

    def floats(self, slot: int) -> list[float] | None:
        return self._get(slot, lambda offset: self.tab.GetVectorAsNumpy(number_types.Float32Flags, offset).tolist())

    def table(self, slot: int) -> _Reader | None:
        return self._get(slot, lambda offset: _Reader(self.tab.Bytes, self.tab.Indirect(offset + self.tab.Pos)))

    def tables(self, slot: int) -> list[_Reader]:
        def read(offset):
            start, count = self.tab.Vector(offset), self.tab.VectorLen(offset)
            return [_Reader(self.tab.Bytes, self.tab.Indirect(start + 4 * i)) for i in range(count)]

        return self._get(slot, read, [])


def read_metadata(model: bytes) -> dict | None:
    """What with_metadata wrote into `model` (a .tflite file's bytes), or None without metadata:
    name, description, version, min_parser_version, the input's color space, mean, std, min and
    max, the output's label files and, when packed, the labels."""
    parsed = schema.Model.GetRootAs(model, 0)
    names = {parsed.Metadata(i).Name().decode(): parsed.Metadata(i).Buffer() for i in range(parsed.MetadataLength())}
    if METADATA_NAME not in names:
        return None
    data = parsed.Buffers(names[METADATA_NAME]).DataAsNumpy().tobytes()
    if data[4:8] != FILE_IDENTIFIER:
        raise ValueError(f"{METADATA_NAME} has identifier {data[4:8]!r}, not {FILE_IDENTIFIER!r}.")
    root = _Reader(data, int.from_bytes(data[:4], "little"))
    subgraph = root.tables(3)[0]
    image, logits = subgraph.tables(2)[0], subgraph.tables(3)[0]
    units = [unit.table(1) for unit in image.tables(4) if unit.byte(0) == _NORMALIZATION]
    stats = image.table(5)
    colors = {value: name for name, (value, _) in COLOR_SPACES.items()}
    content = image.table(3)
    color = content.table(1).byte(0) if content is not None and content.byte(0) == _IMAGE else 0
    files = [f.string(0) for f in logits.tables(6) if f.byte(2) == _TENSOR_AXIS_LABELS]
    labels = None
    if files and zipfile.is_zipfile(io.BytesIO(model)):
        with zipfile.ZipFile(io.BytesIO(model)) as archive:
            if files[0] in archive.namelist():
                labels = archive.read(files[0]).decode().splitlines()
    return {
        **{key: root.string(slot) for key, slot in (("name", 0), ("description", 1), ("version", 2))},
        "min_parser_version": root.string(7),
        "input": {
            "name": image.string(0),
            "color_space": colors.get(color, "UNKNOWN"),
            "mean": units[0].floats(0) if units else None,
            "std": units[0].floats(1) if units else None,
            "min": stats.floats(1) if stats else None,
            "max": stats.floats(0) if stats else None,
        },
        "output": {"name": logits.string(0), "description": logits.string(1), "label_files": files},
        "labels": labels,
    }
