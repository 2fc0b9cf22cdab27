"""shrinkflow.images and the image front of the deployable graph: class folders found as ImageFolder
finds them, images decoded with Pillow to the requested channels, resized as the graph resizes them,
and a deployable graph that takes uint8 images of any size."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from serving.model import ServedModel
from shrinkflow.deployable import IMAGE_SHAPE_KEY, IMAGES, deployable
from shrinkflow.errors import UserError
from shrinkflow.images import ImageError, ImageTooLarge, Resizer, class_folders, decode, encode_png

SIZE = 8  # the candidate's training size: images are 8 x 8
LABELS = ["cat", "dog", "fox"]


def _encoded(image: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    """uint8 H x W x C (or a PIL image) encoded by Pillow itself, not by the code under test."""
    pil = image if isinstance(image, Image.Image) else Image.fromarray(
        image[:, :, 0] if image.shape[2] == 1 else image)
    buffer = io.BytesIO()
    pil.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    """A PNG with a valid header (8-bit RGB, `width` x `height`) and no pixel data at all: it
    can only be refused from its header, decoding it would fail."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def _smooth(height: int, width: int) -> np.ndarray:
    """A smooth uint8 RGB image: slow waves and a ramp, no edges for resizers to disagree on."""
    yy, xx = np.mgrid[0:height, 0:width]
    channels = [127 + 100 * np.sin(xx / 9.0), 127 + 100 * np.cos(yy / 7.0),
                (xx + 2 * yy) * 255 / (width + 2 * height)]
    return np.stack(channels, axis=-1).round().clip(0, 255).astype(np.uint8)


def _touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


# ---------------------------------------------------------------------------------------------
# class_folders
# ---------------------------------------------------------------------------------------------
def test_class_folders__sorted_classes_with_their_image_files_in_any_case(tmp_path: Path):
    # given an ImageFolder tree with other files, hidden entries and a nested folder beside the images
    _touch(tmp_path / "dog" / "c.JpEg", tmp_path / "dog" / "a.jpg", tmp_path / "dog" / "b.PNG",
           tmp_path / "dog" / "notes.txt", tmp_path / "dog" / ".hidden.png", tmp_path / "dog" / "png",
           tmp_path / "dog" / "nested" / "deep.png", tmp_path / "cat" / "1.webp",
           tmp_path / "cat" / "2.TIFF", tmp_path / "cat" / "3.bmp", tmp_path / ".git" / "x.png",
           tmp_path / "README.md")
    (tmp_path / "empty").mkdir()

    # when its classes are found
    classes = class_folders(tmp_path)

    # then the classes are the visible sub-folders, sorted, each with its image files, sorted
    assert [c.name for c in classes] == ["cat", "dog", "empty"]
    assert [c.folder for c in classes] == [tmp_path / "cat", tmp_path / "dog", tmp_path / "empty"]
    assert [[f.name for f in c.files] for c in classes] == [
        ["1.webp", "2.TIFF", "3.bmp"], ["a.jpg", "b.PNG", "c.JpEg"], []]


def test_class_folders__every_image_extension_is_found(tmp_path: Path):
    names = ["a.png", "b.jpg", "c.jpeg", "d.bmp", "e.gif", "f.webp", "g.tif", "h.tiff"]
    _touch(*(tmp_path / "one" / name for name in names), tmp_path / "two" / "x.gif")

    classes = class_folders(tmp_path)

    assert [f.name for f in classes[0].files] == names


def test_class_folders__a_missing_root_or_a_file_is_refused_with_the_key_and_path(tmp_path: Path):
    missing, file = tmp_path / "nowhere", tmp_path / "file.png"
    _touch(file)

    for root in (missing, file):
        with pytest.raises(ImageError) as caught:
            class_folders(root, key="prepare.images.path")
        assert str(caught.value) == f"prepare.images.path: no folder {root}"


@pytest.mark.parametrize(("folders", "found"),
                         [([], "it has none"), (["cat", ".hidden"], "it has only 'cat'")],
                         ids=["no class", "one class and a hidden folder"])
def test_class_folders__fewer_than_two_classes_are_refused(tmp_path: Path, folders: list[str], found: str):
    # given a root with fewer than two visible class folders (and images lying in the root itself)
    for name in folders:
        _touch(tmp_path / name / "1.png")
    _touch(tmp_path / "loose.png")

    # when its classes are looked for, then the error names the key, the folder and what it has
    with pytest.raises(ImageError) as caught:
        class_folders(tmp_path, key="my.key")
    message = str(caught.value)
    assert message.startswith(f"my.key: {tmp_path} needs one sub-folder per class, at least two")
    assert found in message and str(tmp_path / "cat" / "0001.png") in message
    assert isinstance(caught.value, UserError) and isinstance(caught.value, ValueError)


# ---------------------------------------------------------------------------------------------
# decode and encode_png
# ---------------------------------------------------------------------------------------------
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def test_decode__rgb_png_as_uint8_height_width_3():
    image = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)

    decoded = decode(_encoded(image), channels=3)

    assert decoded.dtype == np.uint8 and decoded.shape == (5, 7, 3)
    np.testing.assert_array_equal(decoded, image)


def test_decode__grey_png_as_one_channel_or_repeated_to_three():
    grey = np.random.default_rng(1).integers(0, 256, (6, 4, 1), dtype=np.uint8)
    data = _encoded(grey)

    one, three = decode(data, channels=1), decode(data, channels=3)

    assert one.shape == (6, 4, 1) and three.shape == (6, 4, 3)
    np.testing.assert_array_equal(one, grey)
    np.testing.assert_array_equal(three, np.repeat(grey, 3, axis=2))


def test_decode__rgb_to_grey_weighs_channels_as_pillow_does():
    # given a red, a green, a blue and a white pixel
    image = np.array([[RED, GREEN, BLUE, (255, 255, 255)]], dtype=np.uint8)

    grey = decode(_encoded(image), channels=1)

    # then L = 0.299 R + 0.587 G + 0.114 B (ITU-R 601-2)
    assert grey.shape == (1, 4, 1)
    assert grey[0, :, 0].tolist() == [76, 150, 29, 255]


def test_decode__rgba_drops_the_alpha_channel():
    rgb = np.random.default_rng(2).integers(0, 256, (3, 3, 3), dtype=np.uint8)
    alpha = np.array([[0, 128, 255]] * 3, dtype=np.uint8)[:, :, None]
    data = _encoded(Image.fromarray(np.concatenate([rgb, alpha], axis=2), mode="RGBA"))

    np.testing.assert_array_equal(decode(data, channels=3), rgb)


def test_decode__palette_png_gives_the_palette_colours():
    # given a palette image: indices 0, 1, 2 are red, green and blue
    palette = Image.new("P", (3, 2))
    palette.putpalette([*RED, *GREEN, *BLUE])
    palette.putdata([0, 1, 2, 2, 1, 0])

    decoded = decode(_encoded(palette), channels=3)

    np.testing.assert_array_equal(decoded, [[RED, GREEN, BLUE], [BLUE, GREEN, RED]])


def test_decode__jpeg_has_the_right_shape_and_about_the_pixels():
    image = _smooth(24, 32)

    decoded = decode(_encoded(image, "JPEG", quality=95), channels=3)

    assert decoded.dtype == np.uint8 and decoded.shape == (24, 32, 3)
    assert np.abs(decoded.astype(int) - image).mean() < 3  # lossy, but close on a smooth image


@pytest.mark.parametrize(("data", "fragment"), [
    (b"", "not an image format Pillow reads"),
    (b"hello, this is not an image at all", "not an image format Pillow reads"),
    (_encoded(np.random.default_rng(9).integers(0, 256, (16, 16, 3), dtype=np.uint8))[:400],
     "not a readable image"),
], ids=["empty", "text", "truncated png"])
def test_decode__bytes_that_are_no_image_raise_image_error(data: bytes, fragment: str):
    with pytest.raises(ImageError) as caught:
        decode(data, channels=3)

    assert fragment in str(caught.value)
    assert not isinstance(caught.value, ImageTooLarge)


def test_decode__too_many_pixels_is_refused_from_the_header_before_decoding():
    # given a PNG header announcing 5000 x 4000 pixels (over the default 4096 x 4096), no pixels
    with pytest.raises(ImageTooLarge) as caught:
        decode(_png_header(5000, 4000), channels=3)

    assert "5000 x 4000 pixels" in str(caught.value) and "16,777,216" in str(caught.value)
    assert isinstance(caught.value, ImageError)


def test_decode__max_pixels_is_inclusive():
    data = _encoded(np.zeros((10, 10, 3), np.uint8))

    assert decode(data, channels=3, max_pixels=100).shape == (10, 10, 3)
    with pytest.raises(ImageTooLarge, match="10 x 10 pixels; the limit is 99"):
        decode(data, channels=3, max_pixels=99)


def test_decode__a_decompression_bomb_header_is_too_large_not_unreadable():
    # given a header of 20000 x 10000 pixels (200 M, beyond twice Pillow's MAX_IMAGE_PIXELS)
    with pytest.raises(ImageError) as caught:
        decode(_png_header(20000, 10000), channels=3)

    # then it is refused as too large (413 when served), like any image over the limit
    assert isinstance(caught.value, ImageTooLarge), str(caught.value)


@pytest.mark.parametrize("channels", [1, 3])
def test_encode_png__decode_gives_the_same_pixels(channels: int):
    image = np.random.default_rng(3).integers(0, 256, (9, 11, channels), dtype=np.uint8)

    data = encode_png(image)

    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    decoded = decode(data, channels)
    assert decoded.shape == image.shape
    np.testing.assert_array_equal(decoded, image)


# ---------------------------------------------------------------------------------------------
# Resizer
# ---------------------------------------------------------------------------------------------
def test_resizer__any_size_to_size_x_size_uint8():
    batch = np.random.default_rng(4).integers(0, 256, (2, 16, 12, 3), dtype=np.uint8)

    resized = Resizer(SIZE, 3)(batch)

    assert resized.dtype == np.uint8 and resized.shape == (2, SIZE, SIZE, 3)


def test_resizer__images_at_the_size_are_left_as_they_are():
    batch = np.random.default_rng(5).integers(0, 256, (3, SIZE, SIZE, 1), dtype=np.uint8)

    np.testing.assert_array_equal(Resizer(SIZE, 1)(batch), batch)


@pytest.mark.parametrize("shape", [(40, 24), (3, 5)], ids=["shrink", "grow"])
def test_resizer__a_constant_image_stays_constant(shape: tuple[int, int]):
    batch = np.full((1, *shape, 3), [7, 128, 250], dtype=np.uint8)

    resized = Resizer(SIZE, 3)(batch)

    np.testing.assert_array_equal(resized, np.full((1, SIZE, SIZE, 3), [7, 128, 250]))


def test_resizer__shrinking_a_smooth_image_is_close_to_pillows_bilinear():
    # given a smooth 64 x 48 image
    image = _smooth(64, 48)

    # when it is shrunk to 16 x 16 by the graph's nodes and by Pillow (antialiased bilinear)
    ours = Resizer(16, 3)(image[None])[0]
    pillow = np.asarray(Image.fromarray(image).resize((16, 16), Image.Resampling.BILINEAR))

    # then both agree to within rounding
    difference = np.abs(ours.astype(int) - pillow)
    assert difference.mean() < 1 and difference.max() <= 3


def test_resizer__growing_interpolates_between_the_pixels():
    # given a small 6 x 4 image sampled from the smooth one
    small = _smooth(48, 32)[::8, ::8]

    grown = Resizer(16, 3)(small[None])[0]

    # then it is 16 x 16, within the range of the original, and close to Pillow's bilinear
    pillow = np.asarray(Image.fromarray(small).resize((16, 16), Image.Resampling.BILINEAR))
    assert grown.shape == (16, 16, 3)
    assert (grown.min(axis=(0, 1)) >= small.min(axis=(0, 1))).all()
    assert (grown.max(axis=(0, 1)) <= small.max(axis=(0, 1))).all()
    assert np.abs(grown.astype(int) - pillow).mean() < 1


# ---------------------------------------------------------------------------------------------
# the deployable graph of an image model
# ---------------------------------------------------------------------------------------------
def _candidate(channels: int, seed: int = 0) -> onnx.ModelProto:
    """A candidate as the pipeline exports one: normalized `input` [N, C, 8, 8] -> `logits` [N, 3]
    (a linear layer on the flattened image), opset 18."""
    rng = np.random.default_rng(seed)
    weights = (rng.standard_normal((channels * SIZE * SIZE, len(LABELS))) * 0.3).astype(np.float32)
    bias = rng.standard_normal(len(LABELS)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["product"]),
         helper.make_node("Add", ["product", "b"], ["logits"])],
        "candidate",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", channels, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        [numpy_helper.from_array(weights, "W"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _statistics(channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std, shaped (C, 1, 1) as prepare fits them on images."""
    mean = np.linspace(100, 140, channels, dtype=np.float32).reshape(channels, 1, 1)
    std = np.linspace(50, 70, channels, dtype=np.float32).reshape(channels, 1, 1)
    return mean, std


def _image_model(channels: int) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """(candidate, its deployable graph taking uint8 images)."""
    candidate = _candidate(channels)
    wrapped = deployable(candidate, (channels, SIZE, SIZE), *_statistics(channels), [], LABELS,
                         images=True)
    return candidate, wrapped


@pytest.mark.parametrize("channels", [1, 3])
def test_deployable_images__at_the_training_size_equal_the_candidate_on_normalized_images(channels: int):
    # given a candidate, its deployable image graph, and a random uint8 batch at the training size
    candidate, wrapped = _image_model(channels)
    batch = np.random.default_rng(6).integers(0, 256, (7, SIZE, SIZE, channels), dtype=np.uint8)

    # when the graph gets the raw images
    labels, probabilities = _session(wrapped).run(None, {IMAGES: batch})

    # then it answers what the candidate answers on the images normalized outside it
    mean, std = _statistics(channels)
    normalized = ((batch.transpose(0, 3, 1, 2).astype(np.float32) - mean) / std).astype(np.float32)
    (logits,) = _session(candidate).run(None, {"input": normalized})
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    assert list(labels) == [LABELS[i] for i in logits.argmax(axis=1)]


def test_deployable_images__another_size_is_resized_as_the_resizer_resizes():
    # given the deployable graph of an 8 x 8 RGB model and a batch of 48 x 40 images
    _, wrapped = _image_model(3)
    session = _session(wrapped)
    rng = np.random.default_rng(7)
    batch = np.stack([np.roll(_smooth(48, 40), shift, axis=(0, 1)) for shift in rng.integers(0, 40, 16)])
    batch = np.clip(batch.astype(int) + rng.integers(-20, 21, batch.shape), 0, 255).astype(np.uint8)

    # when the graph gets them as they are, and resized to 8 x 8 first
    labels, probabilities = session.run(None, {IMAGES: batch})
    resized = Resizer(SIZE, 3)(batch)
    labels_resized, probabilities_resized = session.run(None, {IMAGES: resized})

    # then the answers agree but for the resizer's rounding to uint8
    assert resized.shape == (16, SIZE, SIZE, 3)
    np.testing.assert_allclose(probabilities, probabilities_resized, atol=1e-2)
    assert np.mean(labels == labels_resized) >= 0.9


def test_deployable_images__graph_input_and_metadata():
    _, wrapped = _image_model(3)

    (image_input,) = wrapped.graph.input
    metadata = {prop.key: prop.value for prop in wrapped.metadata_props}

    assert image_input.name == IMAGES
    assert image_input.type.tensor_type.elem_type == TensorProto.UINT8
    dims = [d.dim_value or d.dim_param for d in image_input.type.tensor_type.shape.dim]
    assert dims == ["batch", "height", "width", 3]
    assert json.loads(metadata[IMAGE_SHAPE_KEY]) == [SIZE, SIZE, 3]
    assert json.loads(metadata["classes"]) == LABELS
    assert [output.name for output in wrapped.graph.output] == ["label", "probabilities"]


def test_deployable_images__a_non_square_input_is_refused():
    with pytest.raises(ValueError, match="resized to squares"):
        deployable(_candidate(3), (3, SIZE, SIZE + 2), *_statistics(3), [], LABELS, images=True)


def test_served_model__reads_an_image_graph():
    # given the deployable image graph, opened as the server opens it
    _, wrapped = _image_model(3)
    served = ServedModel.from_onnx(wrapped.SerializeToString(), version="3")

    # then it is an image model: no feature names, the image shape as its row
    assert served.image_shape == (SIZE, SIZE, 3)
    assert served.feature_names == () and served.classes == tuple(LABELS)
    assert served.layout == ("image", str(SIZE), str(SIZE), "3")
    assert served.row_shape == (SIZE, SIZE, 3)

    # when it predicts uint8 images, of the training size or another
    batch = np.random.default_rng(8).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    labels, probabilities = served.predict(batch)
    other_labels, other_probabilities = served.predict(np.zeros((2, 20, 30, 3), np.uint8))

    # then it answers as the graph does
    expected_labels, expected_probabilities = _session(wrapped).run(None, {IMAGES: batch})
    assert labels == [str(label) for label in expected_labels]
    np.testing.assert_array_equal(probabilities, expected_probabilities)
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, len(LABELS))
    assert len(other_labels) == 2 and other_probabilities.shape == (2, len(LABELS))
    assert set(labels + other_labels) <= set(LABELS)


def test_decode__16_bit_grey_is_scaled_to_8_bits_not_clipped():
    # given a 16-bit grey PNG spanning the whole range
    values = np.array([[0, 1000, 32896, 65535]], dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(values).save(buffer, format="PNG")
    # when decoded to one channel; then each value is scaled by 255/65535
    assert decode(buffer.getvalue(), channels=1)[0, :, 0].tolist() == [0, 4, 128, 255]
