"""Export: ONNX graphs with state as inputs/outputs, TensorRT engines, manifests."""
