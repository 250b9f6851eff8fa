"""Training a head (`polyhead train`): never imported by a serving process.

params     -- TrainParams, the hyper-parameters a head config may set (pydantic only)
fit        -- the numpy optimiser: train_head (MLP / logistic regression, model selection)
evaluation -- accuracy, F1 and confusion matrices for string labels
pipeline   -- config -> data -> embeddings (gRPC) -> train_head -> versioned artifact
"""
