"""Export: the graph modules that are traced, ONNX export and its checks, TensorRT plans."""
