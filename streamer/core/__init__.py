"""The ground floor every other package may import: errors, geodesy, the propagation model, CURVE security,
bounded-rate logging and the one-line docs of config keys (docs). It imports nothing else of this project,
so receivers/ can build on it."""
