"""Ray Train (Ray layer): the one training engine every model family runs on (engine.py) and the TorchTrainer
driver that fits a stage and records its checkpoint (run.py)."""
