"""Ray Train (Ray layer): PE-MoE's two-stage training as TorchTrainer runs built from a JobSpec."""
