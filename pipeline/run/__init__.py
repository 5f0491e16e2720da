"""Executing runs: the only package that imports torch (and transformers, peft, accelerate, datasets).

* ``job``        -- the callable a task runs: a pack of runs in one process, preemption-safe
* ``runner``     -- one run: load host, attach technique, port / sample / scratch, train, evaluate, write shard
* ``train``      -- the training and evaluation loop (accelerate)
* ``tasks``      -- classification and text-to-text behind one interface
* ``port``       -- save, load, copy and sample a module's tensors (checksummed safetensors)
* ``data``       -- datasets by hub name, local file or ``embedded:`` corpus; deterministic splits
* ``pooling``    -- a classification host's pooling and real-token positions
* ``techniques`` -- the torch code of each technique (declared in ``pipeline.techniques``)
"""
