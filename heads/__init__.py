"""Classifier-head services: light numpy heads over embedder vectors (no TensorFlow here)."""
