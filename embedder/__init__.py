"""polyhead embedder: the sentence encoder behind gRPC (servable, cache, batching, front end, client).

Importing this package (or `embedder.client`) never imports TensorFlow; only the server does.
"""
