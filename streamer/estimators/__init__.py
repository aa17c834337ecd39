"""Position estimators behind one protocol (base): the ONNX model (onnx, contract), the physics posterior
(physics, survey), their credible ellipses (credible), and build, which makes the configured ones."""
