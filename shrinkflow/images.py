"""Image folders and image inputs: found as torchvision's ImageFolder finds them, decoded with
Pillow, resized as the deployed graph resizes them.

A folder `root/` holds one sub-folder per class, `root/<class>/<file>`: the classes are the
sub-folder names in sorted order, their images the files with an image extension
(`IMAGE_EXTENSIONS`, any case). Other files, nested folders and hidden entries are ignored, as
ImageFolder ignores them.

An image is decoded to uint8 H x W x C, C being 1 (grey) or 3 (RGB): palette, alpha and other
modes are converted as Pillow's `convert` does, 16-bit grey scaled to 8 bits. It is then
resized to size x size by the ONNX nodes the deployable graph starts with (`resize_nodes`:
linear, antialiased, half-pixel centres), so that an image of another size sent to the served
model is treated as the training images were, and rounded back to uint8.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from shrinkflow.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MAX_PIXELS = 4096 * 4096  # of one image, by default: bigger ones are refused before decoding
RESIZE_OPSET = 18  # Resize's antialias attribute
_MODES = {1: "L", 3: "RGB"}


class ImageError(UserError, ValueError):
    """An image folder or an image cannot be read as one."""


class ImageTooLarge(ImageError):
    """An image has more pixels than the limit."""


@dataclass(frozen=True)
class ClassFolder:
    """One class of an image folder: its name (the sub-folder's) and its image files, sorted."""

    name: str
    folder: Path
    files: tuple[Path, ...]


def class_folders(root: Path, key: str = "prepare.images.path") -> list[ClassFolder]:
    """The classes of the image folder `root`, in sorted order (see the module docstring).

    Raises:
        ImageError: `root` is not a folder, or has fewer than two class sub-folders (named with
            `key`); a class folder without images is left to validation, which names it.
    """
    if not root.is_dir():
        raise ImageError(f"{key}: no folder {root}")
    folders = sorted(path for path in root.iterdir()
                     if path.is_dir() and not path.name.startswith("."))
    if len(folders) < 2:
        found = f"only {folders[0].name!r}" if folders else "none"
        raise ImageError(f"{key}: {root} needs one sub-folder per class, at least two (it has "
                         f"{found}): put each class's images in a folder named after the class, "
                         f"e.g. {root / 'cat' / '0001.png'}")
    return [ClassFolder(folder.name, folder, tuple(sorted(
        path for path in folder.iterdir()
        if path.is_file() and not path.name.startswith(".")
        and path.suffix.lower() in IMAGE_EXTENSIONS))) for folder in folders]


def decode(data: bytes, channels: int, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The encoded image `data` (PNG, JPEG, ... anything Pillow reads) as uint8 H x W x `channels`.

    Raises:
        ImageError: the bytes are not an image Pillow can decode, or it has more than `max_pixels`
            pixels (checked from its header, before the pixels are decoded).
    """
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > max_pixels:
                raise ImageTooLarge(f"the image has {image.width} x {image.height} pixels; the "
                                    f"limit is {max_pixels:,}")
            if image.mode.startswith("I"):  # 16-bit grey: scaled to 8 bits (convert would clip)
                image = Image.fromarray(
                    (np.asarray(image, np.float64) / 257).round().clip(0, 255).astype(np.uint8))
            converted = image.convert(_MODES[channels])
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # Pillow's own limit, met before ours
        raise ImageTooLarge(str(error)) from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image format Pillow reads (PNG, JPEG, BMP, GIF, WebP, TIFF)"
                         ) from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"not a readable image: {error}") from None
    array = np.asarray(converted, dtype=np.uint8)
    return array[:, :, None] if channels == 1 else array


def encode_png(image: np.ndarray) -> bytes:
    """uint8 H x W x C (C 1 or 3) as PNG bytes: lossless, so `decode` gives the same pixels."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Resizing: the graph's nodes, and a session of them for images outside a graph
# ---------------------------------------------------------------------------------------------
def resize_nodes(source: str, target: str, size: int, prefix: str, antialias: bool = True
                 ) -> tuple[list[onnx.NodeProto], list[TensorProto]]:
    """Nodes (and their constants) resizing float N x C x H x W `source` to N x C x size x size
    `target`: linear, half-pixel centres, antialiased when shrinking if `antialias` (opset 18;
    older graphs get plain linear resizing)."""
    nodes = [
        helper.make_node("Shape", [source], [f"{prefix}input_shape"]),
        helper.make_node("Slice", [f"{prefix}input_shape", f"{prefix}zero", f"{prefix}two"],
                         [f"{prefix}batch_channels"]),
        helper.make_node("Concat", [f"{prefix}batch_channels", f"{prefix}size"],
                         [f"{prefix}sizes"], axis=0),
        helper.make_node("Resize", [source, "", "", f"{prefix}sizes"], [target], mode="linear",
                         **({"antialias": 1} if antialias else {})),
    ]
    constants = [numpy_helper.from_array(np.asarray(value, np.int64), f"{prefix}{name}")
                 for name, value in (("zero", [0]), ("two", [2]), ("size", [size, size]))]
    return nodes, constants


def _resizer_graph(size: int, channels: int) -> onnx.ModelProto:
    """uint8 N x H x W x C -> uint8 N x size x size x C, through `resize_nodes`."""
    nodes, constants = resize_nodes("nchw", "resized", size, "resize_")
    graph = helper.make_graph(
        [helper.make_node("Cast", ["images"], ["float"], to=TensorProto.FLOAT),
         helper.make_node("Transpose", ["float"], ["nchw"], perm=[0, 3, 1, 2]),
         *nodes,
         helper.make_node("Transpose", ["resized"], ["nhwc"], perm=[0, 2, 3, 1]),
         helper.make_node("Round", ["nhwc"], ["rounded"]),
         helper.make_node("Clip", ["rounded", "low", "high"], ["clipped"]),
         helper.make_node("Cast", ["clipped"], ["resized_images"], to=TensorProto.UINT8)],
        "resize",
        [helper.make_tensor_value_info("images", TensorProto.UINT8,
                                       ["batch", "height", "width", channels])],
        [helper.make_tensor_value_info("resized_images", TensorProto.UINT8,
                                       ["batch", size, size, channels])],
        [*constants, numpy_helper.from_array(np.float32(0), "low"),
         numpy_helper.from_array(np.float32(255), "high")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", RESIZE_OPSET)],
                             ir_version=10)  # what ONNX Runtime reads


@dataclass(frozen=True)
class Resizer:
    """Resizes uint8 images to `size` x `size` as the deployable graph does, rounding to uint8."""

    size: int
    channels: int

    @cached_property
    def _session(self):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        graph = _resizer_graph(self.size, self.channels).SerializeToString()
        return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """uint8 N x H x W x C (one size) as N x size x size x C; images of that size as they are."""
        if images.shape[1:3] == (self.size, self.size):
            return images
        return self._session.run(None, {"images": np.ascontiguousarray(images, np.uint8)})[0]
