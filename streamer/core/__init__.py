"""The ground floor every other package may import: errors, geodesy, the propagation model, CURVE security
and bounded-rate logging. It imports nothing else of this project, so receivers/ can build on it."""
