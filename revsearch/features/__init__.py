"""Images to vectors: decoding, query sources, pixel thumbnails, CNN descriptors (torchvision or
ONNX Runtime), multi-scale pooling, PCA."""
