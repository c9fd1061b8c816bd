"""icn-rt: instance masks from image-level labels (PRM + ICN), with ONNX/TensorRT engines."""

__version__ = "0.1.0"
