"""Image request bodies: base64 image files or pixel arrays, resized to the model's size, and a 4xx
naming the image for each kind of mistake; and an image model served by the app."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from serving.app import create_app
from serving.model import ServedModel
from serving.payload import BadRequest, parse_images
from shrinkflow.deployable import deployable
from shrinkflow.images import Resizer, decode
from tests.serving.conftest import CLASSES, DictSource, run_with_client

SHAPE = (8, 8, 3)  # the model's image shape: height, width, channels
RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (2, *SHAPE), dtype=np.uint8)  # two images at the model's size


def encoded(image: np.ndarray, fmt: str = "PNG", **options) -> bytes:
    """uint8 H x W x C as an image file, encoded by Pillow."""
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def b64(image: np.ndarray, fmt: str = "PNG", **options) -> str:
    return base64.b64encode(encoded(image, fmt, **options)).decode("ascii")


def png_header(width: int, height: int) -> bytes:
    """A PNG with a valid header announcing `width` x `height` RGB pixels, and no pixel data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def parse(payload, shape: tuple[int, int, int] = SHAPE, **limits) -> np.ndarray:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return parse_images(body, shape, **limits)


def refused(payload, shape: tuple[int, int, int] = SHAPE, **limits) -> BadRequest:
    with pytest.raises(BadRequest) as caught:
        parse(payload, shape, **limits)
    return caught.value


# ---------------------------------------------------------------------------------------------
# parse_images: accepted bodies
# ---------------------------------------------------------------------------------------------
class TestAccepted:
    def test_base64_pngs(self):
        parsed = parse({"images": [b64(image) for image in IMAGES]})

        assert parsed.dtype == np.uint8 and parsed.shape == (2, *SHAPE)
        np.testing.assert_array_equal(parsed, IMAGES)

    def test_data_url_prefix(self):
        parsed = parse({"images": [f"data:image/png;base64,{b64(IMAGES[0])}", b64(IMAGES[1])]})

        np.testing.assert_array_equal(parsed, IMAGES)

    def test_jpeg(self):
        # given a smooth image sent as a JPEG, with its data URL prefix
        image = np.repeat(np.repeat(IMAGES[:1, ::4, ::4], 4, axis=1), 4, axis=2)[0]
        parsed = parse({"images": [f"data:image/jpeg;base64,{b64(image, 'JPEG', quality=95)}"]})

        assert parsed.dtype == np.uint8 and parsed.shape == (1, *SHAPE)
        np.testing.assert_array_equal(parsed[0], decode(encoded(image, "JPEG", quality=95), 3))

    def test_inputs__nested_lists(self):
        parsed = parse({"inputs": IMAGES.tolist()})

        assert parsed.dtype == np.uint8 and parsed.shape == (2, *SHAPE)
        np.testing.assert_array_equal(parsed, IMAGES)

    def test_inputs__one_image_without_its_batch(self):
        np.testing.assert_array_equal(parse({"inputs": IMAGES[1].tolist()}), IMAGES[1:])

    def test_inputs__as_the_models_named_tensor(self):
        np.testing.assert_array_equal(parse({"inputs": {"images": IMAGES.tolist()}}), IMAGES)

    def test_another_size_is_resized_to_the_models(self):
        # given images of two other sizes, one as a file and one as pixels
        large = RNG.integers(0, 256, (20, 12, 3), dtype=np.uint8)
        small = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)

        from_files = parse({"images": [b64(large), b64(small), b64(IMAGES[0])]})
        from_pixels = parse({"inputs": [large.tolist()]})

        # then each is resized to 8 x 8 as the graph's own resizing does
        resize = Resizer(SHAPE[0], SHAPE[2])
        assert from_files.shape == (3, *SHAPE)
        np.testing.assert_array_equal(from_files[0], resize(large[None])[0])
        np.testing.assert_array_equal(from_files[1], resize(small[None])[0])
        np.testing.assert_array_equal(from_files[2], IMAGES[0])
        np.testing.assert_array_equal(from_pixels, resize(large[None]))

    def test_a_grey_model_converts_colour_images(self):
        parsed = parse({"images": [b64(IMAGES[0])]}, shape=(8, 8, 1))

        assert parsed.shape == (1, 8, 8, 1)
        np.testing.assert_array_equal(parsed[0], decode(encoded(IMAGES[0]), 1))

    def test_a_colour_model_takes_grey_images(self):
        grey = IMAGES[0, :, :, :1]

        parsed = parse({"images": [b64(grey)]})

        np.testing.assert_array_equal(parsed[0], np.repeat(grey, 3, axis=2))


# ---------------------------------------------------------------------------------------------
# parse_images: refused bodies
# ---------------------------------------------------------------------------------------------
GOOD = b64(IMAGES[0])
PIXELS = IMAGES.tolist()


def _with_pixel(value: int) -> list:
    """The two images as nested lists, pixel [1, 0, 0, 2] set to `value`."""
    pixels = IMAGES.astype(int)
    pixels[1, 0, 0, 2] = value
    return pixels.tolist()


# (body, limits, status, fragment of the message)
REFUSED = {
    "not json": (b'{"images": [', {}, 400, "not valid JSON"),
    "empty body": (b"  ", {}, 400, "the body is empty"),
    "not an object": ([GOOD], {}, 400, "must be a JSON object"),
    "no known key": ({"rows": [GOOD]}, {}, 400, "exactly one of the keys 'images'"),
    "both keys": ({"images": [GOOD], "inputs": PIXELS}, {}, 400, "it has 'images', 'inputs'"),
    "images not a list": ({"images": GOOD}, {}, 400, "'images' must be a non-empty list of base64"),
    "no images": ({"images": []}, {}, 400, "'images' must be a non-empty list"),
    "image not a string": ({"images": [GOOD, 5]}, {}, 400, "images[1] must be a base64 string"),
    "not base64": ({"images": [GOOD, "not base64!"]}, {}, 400, "images[1] is not base64"),
    "undecodable": ({"images": [GOOD, base64.b64encode(b"plain text").decode()]}, {}, 400,
                    "images[1]: not an image format"),
    "truncated image": ({"images": [GOOD, base64.b64encode(encoded(IMAGES[1])[:100]).decode()]}, {},
                        400, "images[1]: not a readable image"),
    "inputs not a list": ({"inputs": "pixels"}, {}, 400, "'inputs' of an image model must be integers"),
    "inputs empty": ({"inputs": []}, {}, 400, "'inputs' of an image model must be integers"),
    "inputs of floats": ({"inputs": (IMAGES / 255).tolist()}, {}, 400, "integers 0-255"),
    "inputs ragged": ({"inputs": [PIXELS[0], PIXELS[1][:4]]}, {}, 400, "shaped [N, height, width, 3]"),
    "wrong channels": ({"inputs": IMAGES[:, :, :, :2].tolist()}, {}, 400,
                       "'inputs' has 2 channels; the model takes 3"),
    "value over 255": ({"inputs": _with_pixel(256)}, {}, 400,
                       "inputs[1, 0, 0, 2] is 256; pixel values are 0-255"),
    "negative value": ({"inputs": _with_pixel(-1)}, {}, 400, "inputs[1, 0, 0, 2] is -1"),
    "body too large": ({"images": [GOOD] * 3}, {"max_bytes": 500}, 413, "the limit is 500"),
    "too many images": ({"images": [GOOD] * 3}, {"max_images": 2}, 413, "3 images; the limit is 2"),
    "too many pixel arrays": ({"inputs": PIXELS}, {"max_images": 1}, 413, "2 images; the limit is 1"),
    "image too large": ({"images": [GOOD, base64.b64encode(png_header(5000, 4000)).decode()]}, {}, 413,
                        "images[1]: the image has 5000 x 4000 pixels"),
    "image over max_pixels": ({"images": [GOOD, GOOD]}, {"max_pixels": 63}, 413,
                              "images[0]: the image has 8 x 8 pixels; the limit is 63"),
    "pixel arrays over max_pixels": ({"inputs": PIXELS}, {"max_pixels": 63}, 413,
                                     "8 x 8 pixels; the limit is 63"),
}


@pytest.mark.parametrize(("payload", "limits", "status", "fragment"), REFUSED.values(), ids=REFUSED.keys())
def test_refused(payload, limits: dict, status: int, fragment: str):
    error = refused(payload, **limits)

    assert error.status == status, error.message
    assert fragment in error.message, error.message


def test_refused__grey_pixel_arrays_for_a_colour_model():
    error = refused({"inputs": IMAGES[:, :, :, :1].tolist()})

    assert error.status == 400 and "'inputs' has 1 channels; the model takes 3" in error.message


# ---------------------------------------------------------------------------------------------
# the app serving an image model
# ---------------------------------------------------------------------------------------------
def image_model() -> bytes:
    """A deployable image graph: uint8 [N, H, W, 3] resized to 8 x 8, normalized, a linear layer on
    the flattened image, the labels of the conftest's classes."""
    rng = np.random.default_rng(1)
    weights = (rng.standard_normal((3 * 8 * 8, len(CLASSES))) * 0.3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["input"], ["flat"], axis=1),
         helper.make_node("MatMul", ["flat", "W"], ["logits"])],
        "candidate",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(CLASSES)])],
        [numpy_helper.from_array(weights, "W")])
    candidate = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=10)
    mean, std = np.full((3, 1, 1), 127.5, np.float32), np.full((3, 1, 1), 60.0, np.float32)
    return deployable(candidate, (3, 8, 8), mean, std, [], list(CLASSES), images=True).SerializeToString()


def test_app__predicts_base64_images_and_refuses_bad_and_large_ones():
    # given an app serving an image model, and images of the model's size and of others
    model = image_model()
    source = DictSource({"1": model}, current="1")
    files = [encoded(image) for image in [*IMAGES, RNG.integers(0, 256, (30, 20, 3), dtype=np.uint8)]]
    oversized = base64.b64encode(png_header(5000, 4000)).decode()

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.post("/predict", json={"images": [base64.b64encode(f).decode() for f in files]}),
                await client.post("/predict", json={"images": [GOOD, "%%%"]}),
                await client.post("/predict", json={"images": [GOOD, GOOD, oversized]}),
                await client.get("/model")]

    answer, bad, large, info = run_with_client(create_app(source, poll_seconds=60), scenario)

    # then the labels are the served model's on the decoded images, resized to its size
    assert answer.status_code == 200, answer.text
    served = ServedModel.from_onnx(model, version="1")
    decoded = np.concatenate([Resizer(8, 3)(decode(f, 3)[None]) for f in files])
    labels, probabilities = served.predict(decoded)
    body = answer.json()
    assert body["labels"] == labels and len(labels) == 3
    np.testing.assert_allclose(np.asarray(body["probabilities"], np.float32), probabilities, atol=1e-6)
    assert body["classes"] == list(CLASSES)
    assert info.json()["image_shape"] == [8, 8, 3] and info.json()["feature_names"] == []
    # and a bad image is a 400, an oversized one a 413, both JSON errors naming the image
    assert bad.status_code == 400 and "images[1] is not base64" in bad.json()["error"]
    assert large.status_code == 413 and "images[2]: the image has 5000 x 4000" in large.json()["error"]
