"""Training a head (`polyhead train`).

A serving process imports only `params` and the `families` name registry from here (heads.config
validates a head config's `training:` section with them; both are plain Python and pydantic), never
the numpy optimiser or scikit-learn: tests/unit/heads/training/test_params.py checks it.

params          -- TrainParams, the hyper-parameters a head config may set (pydantic only)
families        -- the head families by name (a plug-in each) and what they search and refit on
mlp             -- the "mlp" family: AdamW-trained networks (numpy)
logreg          -- the "logreg" family: scikit-learn's LogisticRegression, the baseline
blend           -- the "blend" family: the MLP and logreg averaged in probability (served as an mlp head)
selection       -- prior adjustment and the McNemar/Bonferroni choice (and the fold rule), the same for every
                   family and feature set
fit             -- train_head: labels, validation source, every family's search, selection, final model
data            -- stratified splits and folds, class weights, label priors
evaluation      -- accuracy, F1 and confusion matrices for string labels
drift_reference -- the DriftReference an artifact carries (what serving's drift monitor compares with)
run             -- one `polyhead train` run: config -> data -> embeddings (gRPC) -> train_head -> artifact
"""
